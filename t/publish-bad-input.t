#!/usr/bin/perl
# Bad input on the publish endpoint (README "Directives", "Publishing", "Errors and failures"): 400
# for each class of bad channel id and bad event type, with a one-line reason, logged at info and
# never above; nothing gets created.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_parse);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:1m;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /pub                     { publish_channel $arg_ch; }
        location ~ ^/pub/(?<ch>[^/]+)$      { publish_channel $ch; }
        location = /stats                   { channel_stats; }
    }
CONF

sub enc {
    my $s = shift;
    $s =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

my $stats0 = $t->zone_stats('/stats', 'events');
my @workers0 = $t->worker_pids;
my @reasons;    # [request label, reason line] to look for in the log

# Checks a 400 answer: a short one-line text reason; returns the reason.
sub bad_request {
    my ($r, $label) = @_;
    is($r->{status}, 400, "$label: 400") or diag explain $r;
    like($r->{headers}{'content-type'} // '', qr{^text/plain}, "$label: text/plain reason");
    ok($r->{body} =~ /\A[^\r\n]{1,200}\n\z/, "$label: one short line") or diag explain $r->{body};
    (my $line = $r->{body}) =~ s/\n\z//;
    push @reasons, [ $label, $line ];
}

my $mark = $t->log_mark;
my $long = 'l' x 256;

my @bad_ids = (
    [ 'empty value'                 => '' ],
    [ 'empty item (a,,b)'           => 'a,,b' ],
    [ 'empty item (leading comma)'  => ',a' ],
    [ 'empty item (trailing comma)' => 'a,' ],
    [ 'too long (256 bytes)'        => $long ],
    [ 'space'                       => 'a b' ],
    [ 'slash'                       => 'a/b' ],
    [ 'percent after decoding'      => 'a%b' ],
    [ 'plus'                        => 'a+b' ],
    [ 'asterisk'                    => 'a*b' ],
    [ 'non-ASCII (UTF-8)'           => "caf\xc3\xa9" ],
    [ 'NUL'                         => "a\0b" ],
    [ 'control byte'                => "a\x01b" ],
    [ 'two channels (publish takes one)' => 'a,b' ],
    [ 'more than 64 channels'       => join(',', map { "c$_" } 1 .. 65) ],
);
for my $case (@bad_ids) {
    my ($label, $id) = @$case;
    bad_request($t->http(POST => '/pub?ch=' . enc($id), body => 'x'), "bad channel id, $label");
}
is($t->http(POST => '/pub?ch=a%20b', body => 'x')->{body},
   "invalid channel id: character outside A-Z a-z 0-9 _ . : \@ ~ -\n", 'reason text as documented (INTERFACE.md)');
# Ids reach the module percent-encoded as well: decoded once, then checked.
bad_request($t->http(POST => '/pub?ch=a%2Cb', body => 'x'), 'encoded comma: two channels');
bad_request($t->http(POST => '/pub/a%20b', body => 'x'), 'space in a path capture');
bad_request($t->http(GET => '/pub?ch=' . enc($long)), 'GET with a bad id');
bad_request($t->http(DELETE => '/pub?ch=a,,b'), 'DELETE with a bad id');

# ---- event types: 1-64 bytes without CR, LF, NUL
my $ev64 = 'e' x 64;
is($t->http(POST => "/pub?ch=ev&event=$ev64", body => 'x')->{status}, 201, 'event type of 64 bytes: 201');
is($t->http(POST => '/pub?ch=ev', body => 'x', headers => { 'Event-Type' => $ev64 })->{status}, 201,
   'Event-Type header of 64 bytes: 201');
bad_request($t->http(POST => "/pub?ch=ev&event=${ev64}e", body => 'x'), 'event type of 65 bytes (?event=)');
bad_request($t->http(POST => '/pub?ch=ev', body => 'x', headers => { 'Event-Type' => "${ev64}e" }),
            'event type of 65 bytes (header)');
bad_request($t->http(POST => '/pub?ch=ev&event=a%0Db', body => 'x'), 'event type with CR');
bad_request($t->http(POST => '/pub?ch=ev&event=a%0Ab', body => 'x'), 'event type with LF');
bad_request($t->http(POST => '/pub?ch=ev&event=a%00b', body => 'x'), 'event type with NUL');

# ---- the boundaries that are valid
my $id255 = 'm' x 255;
my $r = $t->http(POST => "/pub?ch=$id255", body => 'x');
is($r->{status}, 201, 'channel id of 255 bytes: 201');
is($r->{json}{channel}, $id255, '255-byte id echoed');
$r = $t->http(POST => '/pub?ch=' . enc('AZaz09_.:@~-'), body => 'x');
is($r->{status}, 201, 'every allowed character: 201');
is($r->{json}{channel}, 'AZaz09_.:@~-', 'id echoed');
$r = $t->http(POST => '/pub?ch=%61%62', body => 'x');
is($r->{status}, 201, 'percent-encoded valid id: 201');
is($r->{json}{channel}, 'ab', 'id decoded once');

# ---- 405 is bad input too
$r = $t->http(PATCH => '/pub?ch=ok');
is($r->{status}, 405, 'PATCH: 405');
ok($r->{headers}{allow}, '405 carries Allow');

# ---- odd requests: any clear answer, never a crash (checked below through the worker pids)
my @odd = (
    [ 'truncated percent escape in the id'  => '/pub?ch=%' ],
    [ 'invalid percent escape in the id'    => '/pub?ch=%G1' ],
    [ 'encoded NUL in the middle of a list' => '/pub?ch=a%00,b' ],
    [ 'id of 6000 bytes'                      => '/pub?ch=' . ('x' x 6000) ],
);
for my $case (@odd) {
    my ($label, $path) = @$case;
    my $st = $t->http(POST => $path, body => 'x')->{status};
    ok($st == 400 || $st == 414, "$label: refused ($st)");
}
$r = $t->http(POST => '/pub?ch=dup', body => 'x', headers => [ 'Event-Type' => 'one', 'Event-Type' => 'two' ]);
ok($r->{status} == 201 || $r->{status} == 400, "two Event-Type headers: a clear answer ($r->{status})");
$r = $t->http(POST => '/pub?ch=dup&event=%ZZ', body => 'x');
ok($r->{status} == 201 || $r->{status} == 400, "bad escape in ?event=: a clear answer ($r->{status})");
my $gone = $t->client;    # a publisher that goes away in the middle of its body
$gone->send_raw("POST /pub?ch=cl HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
$gone->close;
$r = $t->raw_request("POST /pub?ch=cl HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n");
is($r->{status}, 400, 'negative Content-Length: 400 (nginx)');
is_deeply([$t->worker_pids], \@workers0, 'no worker crashed or was replaced');
my $extra = grep { $_ eq 'dup' } map { $_->{id} } @{ $t->http(GET => '/stats?channels&prefix=dup')->{json}{channels} || [] };

# ---- nothing was created by the refused requests
my $stats1 = $t->zone_stats('/stats', 'events');
my $dup_published = $t->http(GET => '/pub?ch=dup')->{json}{messages} // 0;
is($stats1->{channels} - $stats0->{channels}, 4 + $extra,
   'only the valid publishes created channels (ev, 255-byte, all-chars, ab, and dup if accepted)');
is($stats1->{published} - $stats0->{published}, 5 + $dup_published, 'only the valid publishes were counted');

# ---- every reason logged at info, and nothing at warn or above for these requests
my %want;
$want{ $_->[1] }++ for @reasons;
for my $reason (sort keys %want) {
    my $qr = quotemeta $reason;
    my $n = $want{$reason};
    my $count = 0;
    $t->wait_for(sub {
        $count = grep { /\[info\].*$qr/ } split /\n/, $t->log_since($mark);
        $count >= $n;
    }, timeout => 3);
    cmp_ok($count, '>=', $n, "reason logged at info for each of its $n requests: $reason");
}
my @loud = grep { /\[(?:warn|error|crit|alert|emerg)\]/ } split /\n/, $t->log_since($mark);
is_deeply(\@loud, [], 'no log line above info for bad input');

done_testing;

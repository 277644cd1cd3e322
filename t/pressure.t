#!/usr/bin/perl
# Zone pressure (README "channel_zone", "Publishing", "Errors and failures"): a 1 MiB zone, history
# 100, publishes spread over 10,000 channels (plus a few hot ones that reach their history),
# payloads of 16 B to 16 KiB, text and binary, each carrying its channel, its publisher's sequence
# number and an MD5 checksum. While publishing, SSE subscribers and a long-poll reader verify every
# message they get.
# - evictions happen; no answer is a 5xx except 507, and 507 only for a message larger than
#   the whole zone (a 256 KiB one still fits once older messages are evicted);
# - nothing retained or delivered is ever corrupted (checksum, channel, id all agree);
# - what the zone retains is exactly what eviction order allows: every acknowledged message
#   with an id at or above the oldest retained one, up to `history` per channel, and nothing else.
# Default 20,000 publishes; CHANNELS_SLOW=1 publishes 200,000.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use POSIX ();
use Digest::MD5 qw(md5_hex);
use MIME::Base64 ();
use Time::HiRes qw(time);
use ChannelsTest qw(id_cmp);
use Children;   # t/lib/Children.pm: forked helpers reporting through pipes

my $PUBLISHES = $ENV{CHANNELS_SLOW} ? 200_000 : 20_000;
my $PUBLISHERS = 2;
my $CHANNELS = 10_000;
my $HISTORY = 100;

my $t = ChannelsTest->new(workers => 2, conf => <<"CONF");
    channel_zone zone=p:1m history=$HISTORY ttl=1h;
    longpoll_timeout 1s;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /multi                 { sse_channel \$arg_ch; }
        location = /lp                    { longpoll_channel \$arg_ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        client_max_body_size 4m;
        client_body_buffer_size 64k;
        location ~ ^/pub/(?<ch>[^/]+)\$    { publish_channel \$ch; }
        location = /stats                 { channel_stats; }
    }
CONF

sub zstat { $t->zone_stats('/stats', 'p', port => 1) }
sub chan { sprintf('c%05d', $_[0]) }

# A message: "<channel>|<publisher>|<seq>|<payload>|<md5 of everything before>".
srand(1);
my $TEXT = join '', map { chr(32 + int rand 95) } 1 .. 70_000;
$TEXT =~ s/\|/!/g;
# binary (mostly not UTF-8: base64 in JSON), without CR and LF, which SSE framing normalises
my $BIN = join '', map { my $b = int rand 254; chr($b >= 10 ? ($b >= 12 ? $b + 2 : $b + 1) : $b) } 1 .. 70_000;
sub make_body {
    my ($ch, $k, $seq) = @_;
    my $r = rand;
    my $len = $r < 0.85 ? 16 + int rand 385 : $r < 0.98 ? 1024 + int rand 3072 : 8192 + int rand 8193;
    my $src = rand() < 0.1 ? $BIN : $TEXT;
    my $head = "$ch|$k|$seq|" . substr($src, int rand(length($src) - $len), $len);
    return "$head|" . md5_hex($head);
}
# Checks a body; returns an error string or undef. $ch: the channel it came from.
sub check_body {
    my ($body, $ch) = @_;
    return 'no checksum' unless length($body) > 33 && substr($body, -33, 1) eq '|';
    my ($head, $sum) = (substr($body, 0, -33), substr($body, -32));
    return 'checksum mismatch' if md5_hex($head) ne $sum;
    my ($bch) = $head =~ /^([^|]*)\|/;
    return "channel $bch delivered as $ch" if defined $ch && $bch ne $ch;
    return undef;
}
sub json_data {
    my $m = shift;
    my $d = $m->{data};
    if (($m->{encoding} // '') eq 'base64') { $d = MIME::Base64::decode_base64($d) } else { utf8::encode($d) }
    return $d;
}

sub done_all { my @c = @_; sub { !grep { $_->{open} } @c } }

my $stop_file = $t->prefix . '/stop';

# ---- subscribers verifying what they are sent: 2 SSE streams of 64 channels each (4 hot ones)
my @watch = map { [ (map { chan(int rand $CHANNELS) } 1 .. 60), map { "hot$_" } 0 .. 3 ] } 1 .. 2;
my @subs = map {
    my $list = $_;
    spawn('sse', sub {
        my $wr = shift;
        my $s = $t->sse_open('/multi?ch=' . join(',', @$list));
        die 'status ' . $s->status . "\n" unless $s->status == 200;
        print $wr "READY\n";
        my ($n, $gaps, $prev) = (0, 0, undef);
        until (-e $stop_file) {
            my $e = $s->next_event(timeout => 0.5);
            if (!$e) { die "stream ended\n" if $s->eof; next }
            if (($e->{event} // '') eq 'channel-gap') { $gaps++; next }
            my $err = check_body($e->{data}, $e->{event});
            print $wr "BAD $e->{id} $err\n" if $err;
            print $wr "BAD $e->{id} id not increasing after $prev\n" if defined $prev && id_cmp($prev, $e->{id}) >= 0;
            $prev = $e->{id};
            my ($k, $seq) = $e->{data} =~ /^[^|]*\|(\d+)\|(\d+)\|/;
            print $wr "GOT $e->{id} $k $seq\n";
            $n++;
        }
        print $wr "DONE $n $gaps\n";
    });
} @watch;
ok(pump(sub { !grep { !grep { $_ eq 'READY' } @{ $_->{lines} } } @subs }, 10), 'verifying SSE subscribers connected');

# ---- a long-poll reader checking retained messages of random channels while they are evicted
my $reader = spawn('lp', sub {
    my $wr = shift;
    my ($n, $polls) = (0, 0);
    until (-e $stop_file) {
        my @ids = ((map { chan(int rand $CHANNELS) } 1 .. 62), 'hot0', 'hot1');
        my $r = $t->poll('/lp?ch=' . join(',', @ids), cursor => '1-0', timeout => 5);
        $polls++;
        print $wr "BAD long-poll answered $r->{status}\n" if $r->{status} >= 500 || !$r->{status};
        next unless $r->{status} == 200;
        die "long-poll answer not JSON\n" unless $r->{json};
        for my $m (@{ $r->{json}{messages} }) {
            my $err = check_body(json_data($m), $m->{channel});
            print $wr "BAD $m->{id} $err\n" if $err;
            $n++;
        }
    }
    print $wr "DONE $n $polls\n";
});

# ---- publishers
my @pubs = map {
    my $k = $_;
    spawn('pub', sub {
        my $wr = shift;
        my $c = $t->client(port => 1);
        my $out = '';
        for my $seq (1 .. $PUBLISHES / $PUBLISHERS) {
            my $ch = rand() < 0.2 ? 'hot' . int(rand 20) : chan(int rand $CHANNELS);
            my $r = $c->request(POST => "/pub/$ch", body => make_body($ch, $k, $seq));
            # a new connection when nginx ends this one (keepalive_requests) or it failed
            $c = $t->client(port => 1)
                if $c->closed || !$r->{status} || ($r->{headers}{connection} // '') =~ /close/i;
            $out .= "PUB $seq $ch " . ($r->{status} == 201 ? $r->{json}{id} : "STATUS:$r->{status}") . "\n";
            if (length $out > 32768) { print $wr $out; $out = '' }
        }
        print $wr $out, "DONE\n";
    });
} 1 .. $PUBLISHERS;

my $t0 = time;
ok(pump(done_all(@pubs), $ENV{CHANNELS_SLOW} ? 1200 : 120), 'publishers finished');
my $elapsed = time - $t0;

my $huge = $t->http(POST => '/pub/huge', port => 1, body => 'H' x (2 * 1024 * 1024));
is($huge->{status}, 507, 'a 2 MiB message in a 1 MiB zone: 507');
is($huge->{body}, "message too large for zone\n", '507 reason');

open my $fh, '>', $stop_file or die;
close $fh;
ok(pump(done_all(@subs, $reader), 20), 'verifiers finished');
waitpid($_->{pid}, 0) for children();

# ---------------------------------------------------------------- answers

my (%acked, %status, @bad);    # "k:seq" => [id, ch]
for my $c (@pubs) {
    my $k = $c == $pubs[0] ? 1 : 2;
    for (@{ $c->{lines} }) {
        next unless /^PUB (\d+) (\S+) (\S+)$/;
        my ($seq, $ch, $ans) = ($1, $2, $3);
        if ($ans =~ /^STATUS:(\d+)/) { $status{$1}++; next }
        $status{201}++;
        $acked{"$k:$seq"} = [ $ans, $ch ];
    }
    push @bad, grep { /^ERROR/ } @{ $c->{lines} };
}
note(sprintf('%d publishes in %.1f s: %s', $PUBLISHES, $elapsed, join(', ', map { "$_ x$status{$_}" } sort keys %status)));
is(scalar(@bad), 0, 'publishers ran without errors') or diag "@bad";
is($status{201} // 0, $PUBLISHES, 'every publish answered 201 (no 5xx, no 507 for messages that fit)')
    or diag explain \%status;

my $z = zstat();
cmp_ok($z->{evicted}, '>', 0, "evictions happened ($z->{evicted})");
cmp_ok($z->{used}, '<=', $z->{size}, 'used <= size');
note("zone: $z->{messages} messages in $z->{channels} channels, used $z->{used} of $z->{size}");

# ---------------------------------------------------------------- verifiers' findings

for my $c (@subs, $reader) {
    my @b = grep { /^(?:BAD|ERROR)/ } @{ $c->{lines} };
    my ($done) = grep { /^DONE/ } @{ $c->{lines} };
    is(scalar(@b), 0, "$c->{kind} verifier: nothing corrupt" . ($done ? " ($done)" : '')) or diag join "\n", @b[0 .. ($#b > 9 ? 9 : $#b)];
}
my $wrong = 0;
for my $c (@subs) {
    for (@{ $c->{lines} }) {
        next unless /^GOT (\S+) (\d+) (\d+)$/;
        $wrong++ if ($acked{"$2:$3"} // [''])->[0] ne $1;
    }
}
is($wrong, 0, 'every message delivered to the SSE subscribers carries the id its publish was given');

# ---------------------------------------------------------------- everything retained

my $list = $t->stats('/stats?channels&limit=100000', port => 1);
my @have = map { $_->{id} } grep { $_->{messages} > 0 } @{ $list->{channels} || [] };
my ($retained_n, $corrupt, %retained) = (0, 0);
while (my @group = splice @have, 0, 64) {
    my $cursor = '1-0';
    while (1) {
        my $r = $t->poll('/lp?ch=' . join(',', @group), cursor => $cursor, timeout => 10);
        last unless $r->{status} == 200 && $r->{json};
        for my $m (@{ $r->{json}{messages} }) {
            my $data = json_data($m);
            if (my $err = check_body($data, $m->{channel})) {
                $corrupt++;
                diag("retained $m->{id} in $m->{channel}: $err") if $corrupt < 10;
                next;
            }
            my ($k, $seq) = $data =~ /^[^|]*\|(\d+)\|(\d+)\|/;
            $retained{"$k:$seq"} = [ $m->{id}, $m->{channel} ];
            $retained_n++;
        }
        last if @{ $r->{json}{messages} } < 64;   # an answer taken at once: one page (README, Long polling)
        $cursor = $r->{json}{last_event_id};
    }
}
is($corrupt, 0, 'no retained message is corrupt');
is($retained_n, $z->{messages}, 'every retained message was read back (count = stats messages)');
my @wrong_id = grep { !$acked{$_} || $acked{$_}[0] ne $retained{$_}[0] || $acked{$_}[1] ne $retained{$_}[1] } keys %retained;
is(scalar(@wrong_id), 0, 'each retained message has the id and channel its publish was given');

# Eviction order: retained = acknowledged messages with id >= the oldest retained, newest
# `history` per channel.
my @all = sort { id_cmp($a->[0], $b->[0]) } values %acked;
my @ret_ids = sort { id_cmp($a, $b) } map { $_->[0] } values %retained;
my $floor = $ret_ids[0] // '0-0';
my (%per_ch, %expect);
for my $m (reverse @all) {
    last if id_cmp($m->[0], $floor) < 0;
    next if ++$per_ch{ $m->[1] } > $HISTORY;
    $expect{ $m->[0] } = 1;
}
my %got = map { ($_ => 1) } @ret_ids;
my @missing = grep { !$got{$_} } keys %expect;
my @extra = grep { !$expect{$_} } keys %got;
is(scalar(@missing), 0, 'no acknowledged message newer than the oldest retained one is missing (oldest evicted first)')
    or diag scalar(@missing) . ' missing, e.g. ' . join(' ', (sort @missing)[0 .. 4]);
is(scalar(@extra), 0, 'nothing retained beyond what history allows');
note(scalar(keys %expect) . " messages expected retained above $floor");

# ---------------------------------------------------------------- a quarter of the zone
# A quarter of the zone fits once older messages are evicted: 201, stored intact.
my $quarter_body = make_body('quarter', 9, 1);
$quarter_body = substr($quarter_body, 0, -33);
$quarter_body .= 'q' x (256 * 1024 - length $quarter_body);
$quarter_body .= '|' . md5_hex($quarter_body);
my $quarter = $t->http(POST => '/pub/quarter', port => 1, body => $quarter_body);
is($quarter->{status}, 201, 'a 256 KiB message in the full 1 MiB zone: 201 (older messages evicted)');

my $qr = $t->poll('/lp?ch=quarter', cursor => '1-0', timeout => 5);
my $qm = $qr->{json} ? $qr->{json}{messages}[0] : undef;
ok($qm && json_data($qm) eq $quarter_body, 'the 256 KiB message is retained intact');

done_testing;

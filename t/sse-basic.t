#!/usr/bin/perl
# SSE subscriber basics (README "Directives", "SSE", issue 3): the response header (sent at once,
# before any message), event framing (id, event type, one data line per line split on LF/CRLF/CR,
# empty data, leading spaces, UTF-8), sse_retry, sse_ping, HEAD, 405 for other methods, 400 with an
# info log line for each class of bad channel id, client close ("client prematurely closed
# connection", count back to 0), odd requests (a body on the GET, pipelined bytes, a stream after a
# HEAD on the same connection), HTTP/1.0 (no chunking), and the access log.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use IO::Socket::INET;
use IO::Select;
use ChannelsTest qw(id_parse id_cmp);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:4m history=100 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[^/]+)$  { sse_channel $ch; }
        location = /ev                     { sse_channel $arg_ch; }
        location ~ ^/retry/(?<ch>[^/]+)$   { sse_retry 1500ms; sse_channel $ch; }
        location ~ ^/retry3s/(?<ch>[^/]+)$ { sse_retry 3s; sse_channel $ch; }
        location ~ ^/ping/(?<ch>[^/]+)$    { sse_ping 300ms; sse_channel $ch; }
        location ~ ^/noping/(?<ch>[^/]+)$  { sse_ping 0; sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
        location = /stats                  { channel_stats; }
    }
CONF

sub wait_subscribed {
    my ($ch, $n) = @_;
    $n //= 1;
    ok($t->wait_subscribers($ch, $n), "$ch has $n subscriber(s)");
}

sub enc {
    my $s = shift;
    $s =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

# What the WHATWG parser makes of published data: CRLF, CR and LF are all line ends.
sub whatwg { my $s = shift; $s =~ s/\r\n|\r|\n/\n/g; $s }

# ---- the response header: at once, before any message
{
    my $s = $t->sse_open('/events/hdr');
    is($s->status, 200, 'subscriber: 200 before anything was published');
    is($s->header('content-type'), 'text/event-stream; charset=utf-8', 'Content-Type');
    is($s->header('cache-control'), 'no-cache', 'Cache-Control: no-cache');
    is($s->header('x-accel-buffering'), 'no', 'X-Accel-Buffering: no');
    ok(!defined $s->header('content-length'), 'no Content-Length on a stream');
    unlike($s->raw, qr/data:/, 'no event came with the header');
    wait_subscribed('hdr');
    my $id = $t->publish('hdr', 'first');
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{data}, 'first', 'then the message arrives on the open stream');
    is($e && $e->{id}, $id, 'with the publish id');
    $s->close;
}

# ---- framing
{
    my $s = $t->sse_open('/events/frame');
    wait_subscribed('frame');
    my @payloads = (
        [ 'plain'                  => 'hello' ],
        [ 'LF lines'               => "one\ntwo\nthree" ],
        [ 'CRLF lines'             => "one\r\ntwo\r\nthree" ],
        [ 'CR lines'               => "one\rtwo\rthree" ],
        [ 'mixed line ends'        => "a\r\nb\rc\nd\r\n\r\ne" ],
        [ 'blank lines inside'     => "x\n\n\ny" ],
        [ 'trailing LF'            => "tail\n" ],
        [ 'trailing CRLF'          => "tail\r\n" ],
        [ 'only a line end'        => "\n" ],
        [ 'empty'                  => '' ],
        [ 'leading space'          => ' indented' ],
        [ 'leading colon'          => ':not a comment' ],
        [ 'field-like lines'       => "id: 7\nevent: fake\nretry: 1\ndata: inner" ],
        [ 'UTF-8'                  => "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80 \xe4\xb8\xad\xe6\x96\x87" ],
        [ 'long line (40000)'      => 'L' x 40000 ],
    );
    my @ids = map { $t->publish('frame', $_->[1]) } @payloads;
    my $prev;
    for my $i (0 .. $#payloads) {
        my ($label, $data) = @{ $payloads[$i] };
        my $e = $s->next_event(timeout => 5);
        ok($e, "$label: event arrived") or next;
        is($e->{id}, $ids[$i], "$label: id is the publish id");
        ok(scalar(() = id_parse($e->{id})), "$label: id has the ms-counter form");
        is($e->{data}, whatwg($data), "$label: data as the WHATWG parser reads it");
        my @names = map { $_->[0] } @{ $e->{fields} };
        is($names[0], 'id', "$label: id comes first");
        ok(!grep({ $_ ne 'data' } @names[1 .. $#names]), "$label: then only data lines (no event type)")
            or diag explain $e->{fields};
        my $lines = () = (whatwg($data) . "\n") =~ /\n/g;
        is(scalar(grep { $_ eq 'data' } @names), $lines, "$label: one data line per line ($lines)");
        is(id_cmp($prev, $e->{id}), -1, "$label: id greater than the previous") if $prev;
        $prev = $e->{id};
    }
    # The wire text: "field: value" lines and a blank line after each event, with one space
    # after the colon so that a leading space of the data survives.
    like($s->raw, qr/^data:  indented\r?\n/m, 'data with a leading space is written after "data: "');
    like($s->raw, qr/^data: :not a comment\r?\n/m, 'data starting with ":" is not a comment line');

    # event types, from the header and from ?event=
    my $id1 = $t->publish('frame', '101.5', headers => { 'Event-Type' => 'price' });
    my $r = $t->http(POST => '/pub/frame?event=news.flash', body => "multi\nline", port => 1);
    is($r->{status}, 201, 'publish with ?event=');
    my $e1 = $s->next_event(timeout => 5);
    my $e2 = $s->next_event(timeout => 5);
    is_deeply($e1 && $e1->{fields}, [ [ id => $id1 ], [ event => 'price' ], [ data => '101.5' ] ],
              'typed event: id, event, data, in this order');
    is_deeply($e2 && $e2->{fields},
              [ [ id => $r->{json}{id} ], [ event => 'news.flash' ], [ data => 'multi' ], [ data => 'line' ] ],
              'typed multi-line event from ?event=');
    $s->close;
}

# ---- sse_retry
{
    my $s = $t->sse_open('/retry/r1');
    is($s->status, 200, 'sse_retry location: 200');
    my $b = $s->next_block(timeout => 5);
    is_deeply($b && $b->{fields}, [ [ retry => '1500' ] ], 'sse_retry 1500ms: the stream starts with "retry: 1500"');
    wait_subscribed('r1');
    my $id = $t->publish('r1', 'after retry');
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{id}, $id, 'then events');
    ok(!grep({ $_->[0] eq 'retry' } @{ $e ? $e->{fields} : [] }), 'retry only once, not per event');
    $s->close;

    my $s3 = $t->sse_open('/retry3s/r3');
    my $b3 = $s3->next_block(timeout => 5);
    is($b3 && $b3->{retry}, '3000', 'sse_retry 3s: "retry: 3000"');
    $s3->close;

    my $s0 = $t->sse_open('/events/r0');
    wait_subscribed('r0');
    $t->publish('r0', 'x');
    my $e0 = $s0->next_event(timeout => 5);
    is($e0 && $e0->{data}, 'x', 'default location: event');
    unlike($s0->raw, qr/^retry:/m, 'no sse_retry (default 0): no retry field');
    $s0->close;
}

# ---- sse_ping
{
    my $opened = Time::HiRes::time();
    my $p = $t->sse_open('/ping/p1');
    my $quiet = $t->sse_open('/noping/p2');
    my $default = $t->sse_open('/events/p3');
    is($p->status, 200, 'sse_ping location: 200');
    # The stream may open with one comment (it flushes the header); after it, pings keep coming.
    my @pings;
    my @at;
    for (1 .. 4) {
        my $b = $p->next_block(timeout => 5);
        last unless $b;
        push @pings, $b;
        push @at, Time::HiRes::time();
    }
    is(scalar @pings, 4, 'sse_ping 300ms: comment blocks keep arriving on an idle stream');
    ok(!grep({ @{ $_->{fields} } } @pings), 'they carry no fields (not events)');
    ok(!grep({ !@{ $_->{comments} } } @pings), 'each is a ":" comment');
    like($p->raw, qr/\A(?::[^\r\n]*\r?\n\r?\n){4}\z/, 'wire: ":" comment lines, each followed by a blank line');
    cmp_ok($at[3] - $opened, '>=', 0.85, 'the opening comment and three pings take at least 3 x 300ms (no ping storm)')
        if @at == 4;
    # The other two streams were open for at least as long: a message is the first thing they
    # get after the one opening comment.
    for my $case ([ $quiet, 'p2', 'sse_ping 0' ], [ $default, 'p3', 'default sse_ping (30s)' ]) {
        my ($s, $ch, $label) = @$case;
        wait_subscribed($ch);
        my $id = $t->publish($ch, 'm');
        my $e = $s->next_event(timeout => 5);
        is($e && $e->{data}, 'm', "$label: message arrives");
        like($s->raw, qr/\A(?::\r?\n\r?\n)?id: \Q$id\E\r?\n/, "$label: no ping before it (idle for over a second)")
            or diag explain $s->raw;
    }
    # A ping does not disturb the events around it.
    wait_subscribed('p1');
    my $id = $t->publish('p1', 'between pings');
    my $e = $p->next_event(timeout => 5);
    is($e && $e->{id}, $id, 'sse_ping stream: events still arrive whole');
    my $after = $p->next_block(timeout => 5);
    ok($after && !@{ $after->{fields} } && @{ $after->{comments} }, 'and pings go on after it');
    $_->close for $p, $quiet, $default;
}

# ---- HEAD
{
    my $c = $t->client;
    my $r1 = $c->request(HEAD => '/events/headch');
    is($r1->{status}, 200, 'HEAD: 200');
    is($r1->{headers}{'content-type'}, 'text/event-stream; charset=utf-8', 'HEAD: the Content-Type a GET gets');
    is($r1->{headers}{'cache-control'}, 'no-cache', 'HEAD: Cache-Control');
    is($r1->{headers}{'x-accel-buffering'}, 'no', 'HEAD: X-Accel-Buffering');
    # Answered whole and at once: a second request on the same connection gets its own answer.
    my $r2 = $c->request(HEAD => '/events/headch', timeout => 5);
    is($r2->{status}, 200, 'HEAD answered at once, without a body (the connection takes another request)')
        or diag explain $r2;
    $c->close;
    is($t->subscribers('headch'), 0, 'HEAD is not a subscriber');
}

# ---- other methods
for my $m (qw(POST PUT DELETE PATCH)) {
    my $r = $t->http($m => '/events/meth', body => ($m =~ /^P/ ? 'x' : undef));
    is($r->{status}, 405, "$m on a subscriber location: 405");
    my $allow = join ',', sort map { s/^\s+|\s+$//gr } split /,/, $r->{headers}{allow} // '';
    is($allow, 'GET,HEAD', "$m: Allow: GET, HEAD");
}

# ---- bad channel ids: 400, one line, logged at info
{
    my $mark = $t->log_mark;
    my @bad = (
        [ 'empty value'                 => '' ],
        [ 'empty item (a,,b)'           => 'a,,b' ],
        [ 'empty item (leading comma)'  => ',a' ],
        [ 'empty item (trailing comma)' => 'a,' ],
        [ 'too long (256 bytes)'        => 'l' x 256 ],
        [ 'space'                       => 'a b' ],
        [ 'slash'                       => 'a/b' ],
        [ 'percent after decoding'      => 'a%b' ],
        [ 'plus'                        => 'a+b' ],
        [ 'quote'                       => 'a"b' ],
        [ 'non-ASCII (UTF-8)'           => "caf\xc3\xa9" ],
        [ 'NUL'                         => "a\0b" ],
        [ 'CR LF'                       => "a\r\nb" ],
        [ 'more than 64 channels'       => join(',', map { "c$_" } 1 .. 65) ],
    );
    my @paths;
    for my $case (@bad) {
        my ($label, $v) = @$case;
        my $path = '/ev?ch=' . enc($v);
        push @paths, $path;
        my $s = $t->sse_open($path, timeout => 5);
        is($s->status, 400, "bad channel id, $label: 400");
        like($s->header('content-type') // '', qr{^text/plain}, "$label: text/plain");
        like($s->body // '', qr/\A[^\r\n]{1,200}\n\z/, "$label: a one-line reason") or diag explain $s->body;
    }
    # Through a path capture (nginx decodes the URI): a space and a percent sign.
    push @paths, '/events/a%20b', '/events/a%25b';
    for my $p (@paths[-2, -1]) {
        my $s = $t->sse_open($p, timeout => 5);
        is($s->status, 400, "bad id in a path capture ($p): 400");
    }
    # Good ids at the limits.
    for my $good ('l' x 255, 'AZaz09_.:@~-', 'a,b', 'x%2Cy') {
        my $s = $t->sse_open('/ev?ch=' . ($good =~ /%/ ? $good : enc($good)), timeout => 5);
        is($s->status, 200, "good channel list '" . substr($good, 0, 20) . "': 200");
        $s->close;
    }

    my $log = $t->log_since($mark);
    my @lines = split /\n/, $log;
    for my $p (@paths) {
        my ($line) = grep { index($_, "\"GET $p HTTP/1.1\"") >= 0 } @lines;
        ok($line && $line =~ /\[info\]/, "bad id $p: an [info] line names the request")
            or diag "log since mark:\n$log";
    }
    my @above = grep { /\[(?:notice|warn|error|crit|alert|emerg)\]/ } @lines;
    is_deeply(\@above, [], 'bad ids are logged at info, never above');
}

# ---- the client goes away: "client prematurely closed connection" at info, count back to 0
{
    my @s = map { $t->sse_open('/events/bye') } 1 .. 4;
    wait_subscribed('bye', 4);
    $t->publish('bye', 'x');
    ok(!grep({ !$_->next_event(timeout => 5) } @s), 'four streams got a message');
    my $mark = $t->log_mark;
    $_->close for @s;
    ok($t->wait_subscribers('bye', 0), 'clients closed: channel info 0 subscribers');
    ok($t->wait_for(sub { my @l = $t->log_since($mark) =~ /\[info\].*client prematurely closed connection/g; @l >= 4 },
                    timeout => 5), 'one "client prematurely closed connection" info line each')
        or diag $t->log_since($mark);
    # A client that closes before anything was published (idle from the start).
    my $idle = $t->sse_open('/events/bye');
    wait_subscribed('bye', 1);
    $idle->close;
    ok($t->wait_subscribers('bye', 0), 'an idle stream closed: 0 subscribers');
    # Publishing to the closed streams' channel is harmless.
    $t->publish('bye', 'nobody');
}

# ---- odd but legal requests: a body on the GET, pipelined bytes after it, a stream after a
# HEAD on the same keep-alive connection. The stream works and its end is still noticed.
{
    my @cases = (
        [ 'GET with a body'         => "GET /events/odd1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 'odd1' ],
        [ 'GET with a chunked body' => "GET /events/odd2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 'odd2' ],
        [ 'a pipelined request after it' => "GET /events/odd3 HTTP/1.1\r\nHost: x\r\n\r\nGET /events/odd3 HTTP/1.1\r\nHost: x\r\n\r\n", 'odd3' ],
        [ 'after a HEAD on the connection' => "HEAD /events/odd4 HTTP/1.1\r\nHost: x\r\n\r\nGET /events/odd4 HTTP/1.1\r\nHost: x\r\n\r\n", 'odd4' ],
    );
    for my $case (@cases) {
        my ($label, $req, $ch) = @$case;
        my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port(0), Proto => 'tcp')
            or die "connect: $!";
        syswrite($c, $req) == length $req or die "write: $!";
        ok($t->wait_subscribers($ch, 1), "$label: one subscriber");
        $t->publish($ch, "msg-$ch");
        my $buf = '';
        my $sel = IO::Select->new($c);
        my $got = $t->wait_for(sub {
            sysread($c, $buf, 65536, length $buf) if $sel->can_read(0.05);
            $buf =~ /^data: msg-\Q$ch\E\r?$/m;
        }, timeout => 5);
        ok($got, "$label: the event arrives");
        close $c;
        ok($t->wait_subscribers($ch, 0), "$label: closing is noticed (0 subscribers)");
    }
}

# ---- HTTP/1.0: no chunked encoding, the stream is delimited by the connection
{
    my $s = $t->sse_open('/events/old', version => '1.0');
    is($s->status, 200, 'HTTP/1.0 client: 200');
    ok(($s->header('transfer-encoding') // '') !~ /chunked/i, 'HTTP/1.0: not chunked');
    wait_subscribed('old');
    my $id = $t->publish('old', "one\ntwo");
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{id}, $id, 'HTTP/1.0: event arrives');
    is($e && $e->{data}, "one\ntwo", 'HTTP/1.0: data');
    is($t->http(DELETE => '/pub/old', port => 1)->{status}, 200, 'DELETE its channel');
    my $d = $s->next_event(timeout => 5);
    is($d && $d->{event}, 'channel-deleted', 'HTTP/1.0: channel-deleted');
    ok($s->wait_eof(timeout => 5), 'HTTP/1.0: then the server closes the connection');
}

# ---- access log
{
    my $s = $t->sse_open('/events/logged');
    wait_subscribed('logged');
    $t->publish('logged', 'x');
    ok($s->next_event(timeout => 5), 'stream for the access log got its event');
    $s->close;
    my $acc = $t->prefix . '/logs/access.log';
    my $line = $t->wait_for(sub {
        open my $fh, '<', $acc or return;
        my ($l) = grep { m{"GET /events/logged HTTP/1\.1" 200 } } <$fh>;
        $l;
    }, timeout => 5);
    ok($line, 'the access log has the stream: "GET /events/logged HTTP/1.1" 200') or diag `cat $acc`;
    my $line400 = `grep -c -F '"GET /ev?ch=a%2C%2Cb HTTP/1.1" 400 ' $acc`;
    is($line400 + 0, 1, 'and the 400 answers too');
}

ok($t->wait_for(sub { ($t->zone_stats('/stats', 'events', port => 1)->{subscribers} // -1) == 0 }, timeout => 5),
   'every stream closed: stats subscribers 0');

done_testing;

#!/usr/bin/perl
# Hostile clients (README "SSE", "Errors and failures"): slowloris on subscribe, never-reading
# subscribers, half-closed sockets, 64-channel subscriptions of random ids, 10 KB cursors, header
# floods, publish bodies at exactly client_max_body_size and one byte over, random bytes on the
# publish and subscriber ports. Each is answered as README (or nginx) says; meanwhile a witness
# subscriber keeps getting every message promptly, no worker dies, and the subscriber counts return
# to the witness alone.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Socket qw(SOL_SOCKET SO_RCVBUF SHUT_WR);
use Time::HiRes qw(time);
use ChannelsTest qw(id_cmp id_parse);
use Attack ();

my $BODY_MAX = 65536;
my $SANITIZED = $ENV{CHANNELS_SANITIZE} || ($ENV{NGINX_BIN} // '') =~ /asan|san\b/;

my $t = ChannelsTest->new(workers => 2, conf => <<"CONF");
    channel_zone zone=h:16m history=1000 ttl=1h;
    client_header_timeout 2s;
    client_body_timeout 2s;
    send_timeout 60s;                      # only the 1 MiB rule cuts slow readers here
    longpoll_timeout 2s;
    server {                                   # public, with room for 10 KB cursors
        listen 127.0.0.1:%%PORT_0%%;
        large_client_header_buffers 4 32k;
        location ~ ^/events/(?<ch>[^/]+)\$ { sse_channel \$ch; }
        location = /multi                 { sse_channel \$arg_ch; }
        location ~ ^/poll/(?<ch>[^/]+)\$   { longpoll_channel \$ch; }
        location ~ ^/raw/(?<ch>[^/]+)\$    { longpoll_channel \$ch format=raw; }
    }
    server {                                   # internal
        listen 127.0.0.1:%%PORT_1%%;
        client_max_body_size $BODY_MAX;
        client_body_buffer_size 8k;            # larger bodies go through a temp file
        location ~ ^/pub/(?<ch>[^/]+)\$    { publish_channel \$ch; }
        location = /stats                 { channel_stats; }
    }
    server {                                   # nginx's default header buffers (8k)
        listen 127.0.0.1:%%PORT_2%%;
        location ~ ^/events/(?<ch>[^/]+)\$ { sse_channel \$ch; }
        location ~ ^/poll/(?<ch>[^/]+)\$   { longpoll_channel \$ch; }
    }
CONF

srand(6);    # reproducible "random" input
my @workers0 = $t->worker_pids;
my $st0 = $t->zone_stats('/stats', 'h', port => 1);

sub zstat { $t->zone_stats('/stats', 'h', port => 1) }
sub rand_id { my $n = shift; join '', map { ('a' .. 'z', 'A' .. 'Z', 0 .. 9, qw(_ . : @ ~ -))[rand 68] } 1 .. $n }
# A raw connection; rcvbuf is set before connect(), so the window it advertises stays small.
sub raw_sock {
    my (%o) = @_;
    my $s = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, $o{rcvbuf}) or die "SO_RCVBUF: $!" if $o{rcvbuf};
    $s->connect(Socket::pack_sockaddr_in($t->port($o{port} // 0), Socket::inet_aton('127.0.0.1')))
        or die "connect: $!";
    binmode $s;
    return $s;
}
# Reads until EOF or the deadline; returns (bytes, saw_eof).
sub drain {
    my ($s, $timeout) = @_;
    my $deadline = time + $timeout;
    my $sel = IO::Select->new($s);
    my $buf = '';
    while ((my $left = $deadline - time) > 0) {
        next unless $sel->can_read($left);
        my $n = sysread($s, $buf, 65536, length $buf);
        return ($buf, 1) if !$n;
    }
    return ($buf, 0);
}

# ---- the witness: one subscriber that must get every message of its channel, promptly, throughout
my $witness = $t->sse_open('/events/witness');
is($witness->status, 200, 'witness subscriber connected');
my (@witness_ids, $witness_slow);
sub witness_check {
    my $label = shift;
    my $t0 = time;
    my $p = $t->publish_request('witness', "w$label");
    is($p->{status}, 201, "witness publish ($label)");
    push @witness_ids, $p->{json}{id};
    my $e = $witness->next_event(timeout => 5);
    my $dt = time - $t0;
    ok($e && $e->{id} eq $p->{json}{id} && $e->{data} eq "w$label",
       sprintf('witness got its message during %s (%.2fs)', $label, $dt))
        or diag explain $e;
    $witness_slow = "$label: ${dt}s" if $dt > 2;
}
witness_check('start');

# ================================================================ slowloris on subscribe
{
    my @slow;
    for my $i (1 .. 40) {
        my $s = raw_sock();
        syswrite($s, "GET /events/witness HTTP/1.1\r\nHost: x\r\n");
        push @slow, $s;
    }
    my $t0 = time;
    my $sent_lines = 0;
    # Trickle a header line every 0.3 s; nginx's client_header_timeout (2 s) bounds the whole header.
    while (time - $t0 < 3) {
        for my $s (@slow) { syswrite($s, "X-Slow-$sent_lines: y\r\n") }
        $sent_lines++;
        witness_check("slowloris $sent_lines") if $sent_lines % 4 == 1;
        select(undef, undef, undef, 0.3);
    }
    my $closed = 0;
    for my $s (@slow) {
        my ($bytes, $eof) = drain($s, 3);
        $closed++ if $eof;
        close $s;
    }
    is($closed, 40, 'slowloris: every trickling connection was closed by client_header_timeout');
    my $z = zstat();
    is($z->{subscribers}, 1, 'slowloris: none of them became a subscriber (only the witness counts)');
}

# ================================================================ never-reading subscribers
{
    # three HTTP/1.1 streams (chunked) and one HTTP/1.0 stream (not chunked, ends with the connection)
    my @idle = map { raw_sock(rcvbuf => 4096) } 1 .. 4;
    syswrite($idle[$_], "GET /events/flood HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n") for 0 .. 2;
    syswrite($idle[3], "GET /events/flood HTTP/1.0\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
    my $reader = $t->sse_open('/events/flood');
    is($reader->status, 200, 'a reading subscriber of the flooded channel');
    ok($t->wait_for(sub { zstat()->{subscribers} == 6 }, timeout => 5), 'four never-reading subscribers attached');
    my $rss0 = Attack::rss_kb($t->worker_pids);
    my $dropped0 = zstat()->{dropped_slow};
    my $chunk = 'F' x (32 * 1024 - 16);
    my ($bad, $sent, $got) = (undef, 0, 0);
    my $read_reader = sub {
        my $timeout = shift;
        while (my $e = $reader->next_event(timeout => $timeout)) {
            $bad //= "reader: message $got corrupt" if $e->{data} ne sprintf('%08d', $got + 1) . $chunk;
            $got++;
            $timeout = 0.001;
        }
    };
    # Publish 32 KiB messages until the four are cut off: the kernel takes up to its socket
    # send buffer (4 MiB here) first, then more than 1 MiB waits in nginx. At most 16 MiB.
    while ($sent < 512) {
        my $p = $t->publish_request('flood', sprintf('%08d', ++$sent) . $chunk);
        $bad //= "publish $sent: $p->{status}" if $p->{status} != 201;
        $read_reader->(0.001);
        last if $sent % 8 == 0 && zstat()->{dropped_slow} >= $dropped0 + 4;
    }
    note("published $sent messages of 32 KiB before the never-reading subscribers were cut off");
    ok(!$bad, 'flood: every publish 201, every message intact') or diag $bad;
    for (1 .. $sent) {
        last if $got >= $sent;
        $read_reader->(5);
        last if $reader->eof || $reader->timed_out;
    }
    is($got, $sent, "the reading subscriber got all $sent messages of 32 KiB, intact and in order");
    is(zstat()->{dropped_slow}, $dropped0 + 4, 'the four never-reading subscribers were cut off (dropped_slow +4)')
        or diag explain zstat();
    for my $i (0 .. $#idle) {
        my $s = $idle[$i];
        my ($bytes, $eof) = drain($s, 10);
        ok($eof, 'a cut-off subscriber sees its connection closed');
        like($bytes, $i < 3 ? qr{^HTTP/1\.1 200 .*Transfer-Encoding: chunked}s : qr{^HTTP/1\.1 200 }, "... after a 200 stream header");
        unlike($bytes, qr/\r\n0\r\n\r\n\z/, '... without a clean end of stream (it was dropped, not ended)') if $i < 3;
        cmp_ok(length $bytes, '<', $sent * 32 * 1024, '... and was not sent the whole flood');
        close $s;
    }
    my $rss1 = Attack::rss_kb($t->worker_pids);
    SKIP: {
        skip 'RSS says nothing under a sanitizer (freed memory is held in quarantine)', 1 if $SANITIZED;
        cmp_ok($rss1 - $rss0, '<', 24 * 1024, sprintf('worker RSS grew by %d KiB during the flood (< 24 MiB)', $rss1 - $rss0));
    }
    $reader->close;
    ok($t->wait_for(sub { zstat()->{subscribers} == 1 }, timeout => 5), 'flood over: only the witness is subscribed');
    witness_check('after flood');
}

# ================================================================ half-closed sockets
{
    my $mark = $t->log_mark;
    # An SSE subscriber that half-closes after its request: nginx takes EOF as the client leaving.
    my $s = raw_sock();
    syswrite($s, "GET /events/half HTTP/1.1\r\nHost: x\r\n\r\n");
    ok($t->wait_for(sub { zstat()->{subscribers} == 2 }, timeout => 5), 'half-close: SSE subscriber attached');
    shutdown($s, SHUT_WR);
    my ($bytes, $eof) = drain($s, 5);
    ok($eof, 'half-closed SSE subscriber: the server closes the connection');
    like($bytes, qr{^HTTP/1\.1 200}, '... after answering 200');
    ok($t->wait_for(sub { zstat()->{subscribers} == 1 }, timeout => 5), '... and releases the subscription');
    close $s;

    # A waiting long-poll that half-closes: forgotten at once.
    $s = raw_sock();
    syswrite($s, "GET /poll/half HTTP/1.1\r\nHost: x\r\n\r\n");
    ok($t->wait_for(sub { zstat()->{subscribers} == 2 }, timeout => 5), 'half-close: long-poll waiting');
    shutdown($s, SHUT_WR);
    ($bytes, $eof) = drain($s, 5);
    ok($eof, 'half-closed waiting long-poll: connection closed');
    ok($t->wait_for(sub { zstat()->{subscribers} == 1 }, timeout => 5), '... and its subscription released');
    close $s;
    ok($t->wait_for_log(qr/\[info\].*client prematurely closed connection/, since => $mark),
       'nginx logged the early close at info');

    # A long-poll with a message waiting, half-closed after the request: still answered.
    my $p = $t->publish_request('half', 'kept');
    $s = raw_sock();
    syswrite($s, "GET /raw/half HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1-0\r\nConnection: close\r\n\r\n");
    shutdown($s, SHUT_WR);
    ($bytes, $eof) = drain($s, 5);
    like($bytes, qr{^HTTP/1\.1 200.*\r\n\r\nkept\z}s, 'half-closed long-poll with a message ready: 200 with it');
    close $s;

    # A publish half-closed after its whole body: published and answered.
    $s = raw_sock(port => 1);
    syswrite($s, "POST /pub/half HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody");
    shutdown($s, SHUT_WR);
    ($bytes, $eof) = drain($s, 5);
    like($bytes, qr{^HTTP/1\.1 201}, 'publish half-closed after the body: 201');
    close $s;

    # A publish half-closed in the middle of its body: nothing is published.
    my $before = $t->http(GET => '/pub/half', port => 1)->{json}{messages};
    is($before, 2, 'channel half holds the two complete publishes');
    $s = raw_sock(port => 1);
    syswrite($s, "POST /pub/half HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" . ('x' x 50));
    shutdown($s, SHUT_WR);
    ($bytes, $eof) = drain($s, 5);
    ok($eof, 'publish half-closed mid-body: connection closed');
    unlike($bytes, qr{^HTTP/1\.1 2}, '... never answered 2xx');
    close $s;
    is($t->http(GET => '/pub/half', port => 1)->{json}{messages}, $before, 'the truncated publish stored nothing');
    witness_check('after half-closes');
}

# ================================================================ 64-channel subscriptions of random ids
{
    my (@subs, @lists);
    for my $i (1 .. 16) {
        my %seen;
        my @ids;
        while (@ids < 64) {
            my $id = rand_id(1 + int rand($i == 1 ? 1 : 40));
            $id = rand_id(255) if $i == 1;        # one subscriber with 64 ids of 255 bytes
            push @ids, $id unless $seen{$id}++;
        }
        my $list = join ',', @ids, $ids[0], $ids[5];   # duplicates are merged
        (my $q = $list) =~ s/([^A-Za-z0-9_.~,-])/sprintf('%%%02X', ord $1)/ge;
        my $s = $t->sse_open("/multi?ch=$q");
        is($s->status, 200, "subscriber $i of 64 random channel ids" . ($i == 1 ? ' (255 bytes each)' : ''));
        push @subs, $s;
        push @lists, \@ids;
    }
    ok($t->wait_for(sub { zstat()->{subscribers} == 17 }, timeout => 5), '16 multi-channel subscribers + witness');
    my %want;   # subscriber index => [ [id, channel, data] ]
    for my $k (1 .. 48) {
        my $i = int rand @lists;
        my $ch = $lists[$i][ int rand 64 ];
        my $p = $t->publish_request($ch, "m$k");
        is($p->{status}, 201, "publish to a random channel of subscriber $i") or next;
        for my $j (0 .. $#lists) {
            push @{ $want{$j} }, [ $p->{json}{id}, $ch, "m$k" ] if grep { $_ eq $ch } @{ $lists[$j] };
        }
    }
    for my $j (0 .. $#subs) {
        my $n = scalar @{ $want{$j} || [] };
        my @got;
        while (@got < $n) {
            my $e = $subs[$j]->next_event(timeout => 5) or last;
            push @got, [ $e->{id}, $e->{event}, $e->{data} ];
        }
        is_deeply(\@got, $want{$j} || [], "multi subscriber $j: its $n messages, event = channel id, in id order");
        $subs[$j]->close;
    }
    my $over = join ',', map { rand_id(10) } 1 .. 65;
    my $r = $t->http(GET => "/multi?ch=$over");
    is($r->{status}, 400, '65 random channel ids: 400');
    is($r->{body}, "too many channels: at most 64 per subscriber\n", '... with the reason');
    ok($t->wait_for(sub { zstat()->{subscribers} == 1 }, timeout => 5), 'multi-channel subscribers released');
    witness_check('after 64-channel subscriptions');
}

# ================================================================ 10 KB cursors
{
    my $p = $t->publish_request('cur', 'old');
    my @cursors = ('1' x 10240, '1732290000123-' . ('9' x 10226), ('9' x 5000) . '-' . ('9' x 5239),
                   join('', map { chr(33 + int rand 94) } 1 .. 10240));
    for my $i (0 .. $#cursors) {
        my $c = $cursors[$i];
        my $s = $t->sse_open('/events/cur', headers => { 'Last-Event-ID' => $c });
        is($s->status, 200, "SSE with a 10 KB cursor ($i): 200, the cursor treated as absent");
        my $live = $t->publish_request('cur', "live$i");
        my $e = $s->next_event(timeout => 5);
        is($e && $e->{data}, "live$i", "cursor $i: no replay of older messages, live delivery works");
        $s->close;
        my $lp = $t->poll_start('/poll/cur', cursor => $c, cursor_in => 'arg');
        ok($t->wait_for(sub { zstat()->{subscribers} == 2 }, timeout => 5), "long-poll with a 10 KB cursor argument ($i) waits");
        my $live2 = $t->publish_request('cur', "lp$i");
        my $r = $lp->result(timeout => 10);
        is($r->{status}, 200, "long-poll, cursor $i: 200 when a message arrives");
        is_deeply([ map { $_->{data} } @{ $r->{json}{messages} || [] } ], ["lp$i"], "long-poll, cursor $i: only the new message");
    }
    # 10 KB that still spell an id (leading zeros): honoured as the cursor 1-0, so all is replayed.
    my $s = $t->sse_open('/events/cur', headers => { 'Last-Event-ID' => '1-' . ('0' x 10238) });
    is($s->status, 200, 'SSE with a 10 KB cursor 1-000...0: 200');
    my $e = $s->next_event(timeout => 5);
    is_deeply([ $e && $e->{id}, $e && $e->{data} ], [ $p->{json}{id}, 'old' ], '... read as 1-0: the replay starts at the oldest');
    $s->close;
    # Over nginx's default 8k header buffers, nginx refuses the request itself.
    my $r = $t->http(GET => '/events/cur', port => 2, headers => { 'Last-Event-ID' => '1' x 10240 });
    is($r->{status}, 400, 'a 10 KB Last-Event-ID over 8k header buffers: nginx answers 400');
    $r = $t->http(GET => '/poll/cur?last_event_id=' . ('1' x 10240), port => 2);
    is($r->{status}, 414, 'a 10 KB cursor argument over 8k buffers: 414');
    witness_check('after 10 KB cursors');
}

# ================================================================ header floods
{
    my @many = map { ("X-Flood-$_" => 'v' x 40) } 1 .. 300;
    my $s = $t->sse_open('/events/hdr', headers => { @many });
    is($s->status, 200, '300 extra headers (within the buffers): 200');
    $s->close;
    my @dup = map { ('Last-Event-ID' => "1-$_") } 1 .. 100;
    my $r = $t->http(GET => '/poll/hdr', headers => \@dup, timeout => 10);
    ok($r->{status} == 200 || $r->{status} == 204, "100 Last-Event-ID headers: answered ($r->{status})");
    my $big = join '', map { "X-Flood-$_: " . ('v' x 60) . "\r\n" } 1 .. 3000;
    $r = $t->raw_request("GET /events/hdr HTTP/1.1\r\nHost: x\r\n$big\r\n");
    is($r->{status}, 400, '3000 headers (200 KB): nginx answers 400');
    $r = $t->raw_request("GET /events/hdr HTTP/1.1\r\nHost: x\r\nX-Huge: " . ('h' x 100_000) . "\r\n\r\n");
    is($r->{status}, 400, 'one 100 KB header: nginx answers 400');
    my @evdup = map { ('Event-Type' => "e$_") } 1 .. 50;
    $r = $t->publish_request('hdr', 'dup events', headers => \@evdup);
    ok($r->{status} == 201 || $r->{status} == 400, "publish with 50 Event-Type headers: $r->{status}");
    $r = $t->raw_request("POST /pub/hdr HTTP/1.1\r\nHost: x\r\nConnection: close\r\n$big\r\n", port => 1);
    is($r->{status}, 400, 'publish with a 200 KB header flood: 400');
    witness_check('after header floods');
}

# ================================================================ bodies at the limit
{
    my $exact = join '', map { chr(int rand 256) } 1 .. $BODY_MAX;
    my $p = $t->publish_request('limit', $exact, headers => { 'Content-Type' => 'application/octet-stream' });
    is($p->{status}, 201, "a body of exactly client_max_body_size ($BODY_MAX bytes): 201");
    my $r = $t->poll('/raw/limit', cursor => '1-0');
    ok($r->{body} eq $exact, 'it is stored whole (read back byte for byte through long-poll raw)')
        or diag 'got ' . length($r->{body}) . ' bytes';
    $r = $t->publish_request('limit', $exact . 'x');
    is($r->{status}, 413, 'one byte over: 413');
    my $first = $p->{json}{id};
    $p = $t->publish_request('limit', $exact, chunked => 1, chunk_size => 7000);
    is($p->{status}, 201, 'exactly the limit, chunked: 201');
    $r = $t->poll('/raw/limit', cursor => $first);
    ok($r->{body} eq $exact, 'the chunked one is stored whole too') or diag 'got ' . length($r->{body}) . ' bytes';
    $r = $t->publish_request('limit', $exact . 'x', chunked => 1, chunk_size => 7000);
    is($r->{status}, 413, 'one byte over, chunked: 413');
    $r = $t->raw_request("POST /pub/limit HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", port => 1);
    ok($r->{status} == 413 || $r->{status} == 400, "absurd Content-Length: $r->{status}");
    $r = $t->raw_request("POST /pub/limit HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", port => 1);
    is($r->{status}, 400, 'negative Content-Length: 400');
    # A body that never completes: client_body_timeout, nothing stored.
    my $s = raw_sock(port => 1);
    syswrite($s, "POST /pub/limit HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
    my ($bytes, $eof) = drain($s, 6);
    ok($eof, 'a body that stops half-way: closed after client_body_timeout');
    close $s;
    is($t->http(GET => '/pub/limit', port => 1)->{json}{messages}, 2, 'the channel holds exactly the two accepted bodies');
    witness_check('after body limits');
}

# ================================================================ random bytes
{
    my $published0 = zstat()->{published};
    my ($answered, $bad) = (0, 0);
    for my $i (1 .. 60) {
        my $port = $i % 3 == 0 ? 0 : 1;
        my $junk = join '', map { chr(int rand 256) } 1 .. (1 + int rand 4096);
        $junk = "POST /pub/junk HTTP/1.1\r\n$junk" if $i % 4 == 0;
        $junk = "GET /events/junk HTTP/1.1\r\nHost: x\r\n$junk" if $i % 5 == 0;
        my $s = raw_sock(port => $port);
        syswrite($s, $junk);
        shutdown($s, SHUT_WR);
        my ($bytes, $eof) = drain($s, 5);
        close $s;
        if ($bytes =~ m{^HTTP/1\.\d (\d{3})}) {
            $answered++;
            $bad++, diag("random bytes $i: answered $1") if $1 < 400 || $1 >= 500;
        }
    }
    is($bad, 0, "random bytes on the publish and subscriber ports: never a 2xx/3xx/5xx ($answered answered 4xx)");
    is(zstat()->{published}, $published0, 'random bytes published nothing');
    witness_check('after random bytes');
}

# ================================================================ nothing else was disturbed
is_deeply([ $t->worker_pids ], \@workers0, 'no worker process died during the abuse');
ok(!$witness->eof, 'the witness stream is still open');
ok(!$witness_slow, 'the witness never waited more than 2 s for a message') or diag $witness_slow;
my $bad_order = grep { id_cmp($witness_ids[$_ - 1], $witness_ids[$_]) >= 0 } 1 .. $#witness_ids;
is($bad_order, 0, 'witness ids increase');
ok($t->wait_for(sub { zstat()->{subscribers} == 1 }, timeout => 5), 'subscribers: the witness alone')
    or diag explain zstat();
$witness->close;
ok($t->wait_for(sub { zstat()->{subscribers} == 0 }, timeout => 5), 'subscribers: 0 after the witness leaves');

done_testing;

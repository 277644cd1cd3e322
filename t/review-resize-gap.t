#!/usr/bin/perl
# Review finding: a reload that changes a zone's size drops every retained message without a
# gap floor, so a client resuming from a cursor older than the dropped messages is not told
# (README "SSE": "if messages after the cursor were already evicted or expired, the stream first
# sends event: channel-gap"; README "Publishing": the history floor is kept so that a client resuming from an
# older cursor still gets channel-gap).
#
# A size change makes nginx create a new shared zone. ShmStore::init() builds its root from
# the clock and the old zone's last id (previous_zone_last_id()), but leaves gap_floor and
# gc_floor at zero: new channels start with trimmed_upto = gc_floor = 0, so
# `trimmed_upto(ch) > cursor` never holds and no channel-gap is sent (SSE), no "gap":true
# (long-poll). The rebuild after a torn update does set them (rebuild_locked()); a resize
# loses as much and should too. So does a restart: open_id_file() raises last_id from the id
# file but sets no floor.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;

my $conf = <<'CONF';
    channel_zone zone=z:SIZE history=100 ttl=1h;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[\w.-]+)$ { sse_channel $ch; }
        location ~ ^/poll/(?<ch>[\w.-]+)$   { longpoll_channel $ch; }
        location ~ ^/pub/(?<ch>[\w.-]+)$    { publish_channel $ch; }
    }
CONF
(my $small = $conf) =~ s/SIZE/1m/;
(my $large = $conf) =~ s/SIZE/2m/;
my $t = ChannelsTest->new(workers => 1, conf => $small);

my $m1 = $t->publish('news', 'one', port => 0);    # the client has read up to here
my $m2 = $t->publish('news', 'two', port => 0);    # ... and not these
my $m3 = $t->publish('news', 'three', port => 0);

ok($t->reload(conf => $large), 'reload with the zone resized from 1m to 2m');
my $info = $t->http(GET => '/pub/news');
is($info->{status}, 404, 'the resized zone retains nothing of the old one');

my $s = $t->sse_open('/events/news', headers => { 'Last-Event-ID' => $m1 });
is($s->status, 200, 'the client resumes from its cursor');
$t->publish('news', 'four', port => 0);
my @ev = $s->events_for(timeout => 2);
my @names = map { $_->{event} // 'message' } @ev;
note('it receives: ' . join(', ', @names));
is($names[0], 'channel-gap', 'first a channel-gap: "two" and "three" are gone');

my $r = $t->poll('/poll/news', cursor => $m1, timeout => 5);
ok($r->{json} && $r->{json}{gap}, 'a long-poll from the same cursor gets "gap": true');

# The same after a restart: the id file (channels-z.id) carries the last id over, but not as
# a gap floor.
$s->close;
my $m5 = $t->publish('news', 'five', port => 0);
$t->restart;
my $s2 = $t->sse_open('/events/news', headers => { 'Last-Event-ID' => $m1 });
$t->publish('news', 'six', port => 0);
my @ev2 = map { $_->{event} // 'message' } $s2->events_for(timeout => 2);
note('after a restart, resuming from the same cursor: ' . join(', ', @ev2));
is($ev2[0], 'channel-gap', 'after a restart too, a channel-gap first');

done_testing;

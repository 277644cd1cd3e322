#!/usr/bin/perl
# Fan-out (README "SSE", issue 3): 4 workers, 1000 SSE subscribers spread over them (reuseport; the
# stats' workers[] show the spread), 100 messages published from fresh connections, over a
# keep-alive connection, and concurrently from three forked publishers: every subscriber gets
# all 100, in id order, once. The 1000 streams are read by one process, as bytes come
# (the harness's sse_start and ChannelsTest::SSE::pump).
# Also notes two figures: worker memory per idle subscriber and the time one publish takes to
# reach all subscribers.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use POSIX ();
use ChannelsTest qw(id_cmp);
use Attack ();

# SSE_FANOUT_SUBSCRIBERS / SSE_FANOUT_WORKERS override the sizes for a quick benchmark run
# (e.g. 10000 and 2; run with `prove -v` to see the figures).
my $N = $ENV{SSE_FANOUT_SUBSCRIBERS} || 1000;    # subscribers
my $W = $ENV{SSE_FANOUT_WORKERS} || 4;           # workers
my $WC = int($N / $W * 1.5) + 1024;    # per worker; reuseport spreads the connections

my $t = ChannelsTest->new(workers => $W, worker_connections => $WC, conf => <<"CONF");
    channel_zone zone=events:8m history=200 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport backlog=$WC;
        location ~ ^/events/(?<ch>[^/]+)\$  { sse_channel \$ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%% reuseport;
        location ~ ^/pub/(?<ch>[^/]+)\$     { publish_channel \$ch; }
        location = /stats                  { channel_stats; }
    }
CONF

sub zone { $t->zone_stats('/stats', 'events', port => 1) || {} }

my $rss0 = Attack::anon_kb($t->worker_pids);

# ---- 1000 subscribers
my @subs;
my $t0 = Time::HiRes::time();
for my $i (1 .. $N) {
    push @subs, $t->sse_start('/events/fan');
}

# Reads whatever is readable until $done->() or the deadline.
sub pump { ChannelsTest::SSE::pump(\@subs, @_) }

ok(pump(sub { !grep { !$_->started } @subs }, 20), "$N stream headers received")
    or diag(scalar(grep { !$_->started } @subs) . ' without a header');
is(scalar(grep { ($_->status // 0) == 200 } @subs), $N, "all $N answered 200");
my $z;
ok($t->wait_for(sub { $z = zone(); ($z->{subscribers} // 0) == $N }, timeout => 20),
   "stats: $N subscribers") or diag explain $z;
my %per = map { $_->{pid} => $_->{subscribers} } @{ $z->{workers} || [] };
is(scalar keys %per, $W, "stats list $W workers");
my $min = (sort { $a <=> $b } values %per)[0] // 0;
cmp_ok($min, '>=', int($N / $W / 2), "spread over the workers: " . join(' / ', map { $per{$_} } sort keys %per));
my $sum = 0; $sum += $_ for values %per;
is($sum, $N, 'the workers\' subscribers add up to the zone\'s');
my $rss1 = Attack::anon_kb($t->worker_pids);
note(sprintf('figure: %d idle subscribers opened in %.1fs; worker anonymous RSS %d KiB -> %d KiB, %.2f KiB per subscriber',
             $N, Time::HiRes::time() - $t0, $rss0, $rss1, ($rss1 - $rss0) / $N));

# ---- one publish, time to reach everyone
{
    my $t1 = Time::HiRes::time();
    my $r = $t->http(POST => '/pub/fan', body => 'probe', port => 1);
    is($r->{status}, 201, 'probe published');
    is($r->{json}{subscribers}, $N, "probe: $N subscribers at publish time");
    ok(pump(sub { !grep { @{ $_->received } < 1 } @subs }, 20), 'probe reached every subscriber');
    note(sprintf('figure: one publish reached %d subscribers on %d workers in %.1f ms',
                 $N, $W, (Time::HiRes::time() - $t1) * 1000));
    my @bad = grep { ($_->received->[0]{data} // '') ne 'probe' || $_->received->[0]{id} ne $r->{json}{id} } @subs;
    is(scalar @bad, 0, 'every subscriber got the probe with its id');
    @{ $_->received } = () for @subs;
}

# ---- 100 messages: 40 on fresh connections, 30 on one keep-alive connection, 30 from three
# concurrent publishers
my $z0 = zone();
my @published;    # [id, data]
for my $i (1 .. 40) {
    my $r = $t->http(POST => '/pub/fan', body => "fresh-$i", port => 1);
    push @published, [ $r->{json}{id}, "fresh-$i" ] if $r->{status} == 201;
}
{
    my $c = $t->client(port => 1);
    for my $i (1 .. 30) {
        my $r = $c->request(POST => '/pub/fan', body => "keepalive-$i");
        push @published, [ $r->{json}{id}, "keepalive-$i" ] if $r->{status} == 201;
    }
    $c->close;
}
{
    my @kids;
    for my $p (1 .. 3) {
        my $file = $t->prefix . "/publisher-$p.txt";
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            open my $out, '>', $file or POSIX::_exit(2);
            my $c = $p == 1 ? undef : $t->client(port => 1);
            for my $i (1 .. 10) {
                my $data = "concurrent$p-$i";
                my $r = $c ? $c->request(POST => '/pub/fan', body => $data)
                           : $t->http(POST => '/pub/fan', body => $data, port => 1);
                print $out ($r->{status} == 201 ? "$r->{json}{id} $data\n" : "ERR $r->{status}\n");
            }
            close $out;
            POSIX::_exit(0);
        }
        push @kids, [ $pid, $file ];
    }
    for my $k (@kids) {
        waitpid $k->[0], 0;
        open my $in, '<', $k->[1] or next;
        for (<$in>) {
            push @published, [ $1, $2 ] if /^(\S+-\S+) (\S+)$/;
        }
    }
}
is(scalar @published, 100, '100 messages published (40 fresh, 30 keep-alive, 3 x 10 concurrently)');
my @want = sort { id_cmp($a->[0], $b->[0]) } @published;
my $want = join ' ', map { "$_->[0]=$_->[1]" } @want;
# each concurrent publisher's own messages are in its order
for my $p (1 .. 3) {
    my @mine = map { $_->[1] } grep { $_->[1] =~ /^concurrent$p-/ } @want;
    is(join(',', @mine), join(',', map { "concurrent$p-$_" } 1 .. 10), "publisher $p: its ids follow its order");
}

my $t2 = Time::HiRes::time();
ok(pump(sub { !grep { @{ $_->received } < 100 && !$_->eof } @subs }, 30), 'every stream got 100 events (or ended)');
note(sprintf('figure: 100 messages x %d subscribers read in %.1fs after the last publish', $N, Time::HiRes::time() - $t2));
my @bad;
for my $i (0 .. $#subs) {
    my $got = join ' ', map { "$_->{id}=$_->{data}" } @{ $subs[$i]->received };
    push @bad, $i if $got ne $want;
    diag("subscriber $i got " . scalar(@{ $subs[$i]->received }) . " events" . ($subs[$i]->eof ? ' and the stream ended' : ''))
        if $got ne $want && @bad <= 5;
}
is(scalar @bad, 0, "all $N subscribers got all 100 messages, in id order, once");
my $z1;
ok($t->wait_for(sub { $z1 = zone(); $z1->{delivered} - $z0->{delivered} == 100 * $N }, timeout => 10),
   "stats: delivered grew by 100 x $N") or diag("delivered grew by " . ($z1->{delivered} - $z0->{delivered}));
is($z1->{dropped_slow}, 0, 'no subscriber was dropped as slow');

# ---- close them all
$_->close for @subs;
ok($t->wait_for(sub { (zone()->{subscribers} // -1) == 0 }, timeout => 20), 'stats: 0 subscribers after closing all');

done_testing;

#!/usr/bin/perl
# 4 workers, 4 publisher processes at once (README "Publishing"): every id unique, each publisher's
# ids strictly increasing, the retained history is exactly the newest `history` messages, nothing
# lost.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use ChannelsTest qw(id_cmp slurp);

my $PUBLISHERS = 4;
my $PER_SHARED = 100;   # each publisher, to the shared channel
my $PER_OWN    = 30;    # each publisher, to its own channel
my $HISTORY    = 100;

my $t = ChannelsTest->new(workers => 4, conf => <<"CONF");
    channel_zone zone=events:8m history=$HISTORY ttl=1h;
    log_format pubpid '\$pid \$status';
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        access_log logs/publish.log pubpid;
        location ~ ^/pub/(?<ch>[^/]+)\$ { publish_channel \$ch; }
        location = /stats              { access_log off; channel_stats; }
    }
CONF

my $st0 = $t->zone_stats('/stats', 'events');

# Each publisher reports "channel id" lines through a pipe, in the order it got the answers.
my @readers;
for my $p (1 .. $PUBLISHERS) {
    pipe(my $rd, my $wr) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $rd;
        my $out = '';
        my $c;
        my ($shared, $own) = (0, 0);
        my @plan = map {
            ($_ % 4 == 3 && $own < $PER_OWN) || $shared >= $PER_SHARED ? ($own++, "own$p")[1] : ($shared++, 'shared')[1]
        } 1 .. $PER_SHARED + $PER_OWN;
        for my $i (0 .. $#plan) {
            # every other request on a new connection, so the 4 workers all take part
            $c = $t->client if !$c || $i % 2 == 0;
            my $r = $c->request(POST => "/pub/$plan[$i]", body => "p$p-$i");
            $out .= $r->{status} == 201 ? "$plan[$i] $r->{json}{id}\n" : "$plan[$i] ERROR $r->{status}\n";
            $c->close if $i % 2 == 1;
        }
        print $wr $out;
        close $wr;
        POSIX::_exit(0);
    }
    close $wr;
    push @readers, [ $pid, $rd ];
}

my (%by_pub, @all_shared, @all);
for my $rd (@readers) {
    my ($pid, $fh) = @$rd;
    local $/;
    my $text = <$fh> // '';
    waitpid $pid, 0;
    is($?, 0, "publisher $pid finished");
    my @lines = map { [ split / / ] } split /\n/, $text;
    $by_pub{$pid} = \@lines;
}

my $errors = 0;
for my $pid (sort keys %by_pub) {
    my @lines = @{ $by_pub{$pid} };
    is(scalar(@lines), $PER_SHARED + $PER_OWN, "publisher $pid: all answers received");
    my @bad = grep { $_->[1] eq 'ERROR' } @lines;
    $errors += @bad;
    my @ids = map { $_->[1] } grep { $_->[1] ne 'ERROR' } @lines;
    my $disorder = grep { id_cmp($ids[$_ - 1], $ids[$_]) >= 0 } 1 .. $#ids;
    is($disorder, 0, "publisher $pid: its ids strictly increase");
    push @all, @ids;
    push @all_shared, map { $_->[1] } grep { $_->[0] eq 'shared' && $_->[1] ne 'ERROR' } @lines;
}
is($errors, 0, 'every publish answered 201');

my %seen;
my @dups = grep { $seen{$_}++ } @all;
is(scalar(@dups), 0, 'ids are unique across all publishers and workers') or diag "duplicates: @dups[0 .. ($#dups < 9 ? $#dups : 9)]";
is(scalar(@all), $PUBLISHERS * ($PER_SHARED + $PER_OWN), 'all ids collected');

my %pids = map { (split / /)[0] => 1 } split /\n/, slurp($t->prefix . '/logs/publish.log');
cmp_ok(scalar(keys %pids), '>=', 2, 'publishes were served by several workers (' . join(',', sort keys %pids) . ')');

# ---- the retained history is the newest $HISTORY of the shared channel, in id order
my @sorted = sort { id_cmp($a, $b) } @all_shared;
my $info = $t->http(GET => '/pub/shared')->{json};
is($info->{messages}, $HISTORY, "shared channel keeps exactly history=$HISTORY messages");
is($info->{last_event_id}, $sorted[-1], 'its newest id is the largest id published to it');
is($info->{oldest_event_id}, $sorted[-$HISTORY], "its oldest id is the ${HISTORY}th largest (nothing lost, nothing extra)");

for my $pid (sort keys %by_pub) {
    my ($own) = map { $_->[0] } grep { $_->[0] =~ /^own/ } @{ $by_pub{$pid} };
    my @own_ids = sort { id_cmp($a, $b) } map { $_->[1] } grep { $_->[0] eq $own } @{ $by_pub{$pid} };
    my $i = $t->http(GET => "/pub/$own")->{json};
    is_deeply([@$i{qw(messages oldest_event_id last_event_id)}], [$PER_OWN, $own_ids[0], $own_ids[-1]],
              "$own retains all its $PER_OWN messages");
}

my $st = $t->zone_stats('/stats', 'events');
is($st->{published} - $st0->{published}, scalar(@all), 'stats: published counts every message');
is($st->{messages}, $HISTORY + $PUBLISHERS * $PER_OWN, 'stats: messages = what the channels retain');
is($st->{channels}, 1 + $PUBLISHERS, 'stats: channels');
is($st->{evicted}, 0, 'stats: nothing evicted (history trimming is not eviction)');

done_testing;

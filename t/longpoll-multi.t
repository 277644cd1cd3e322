#!/usr/bin/perl
# Multi-channel long-poll (README "Directives", "Publishing": ids, "Long polling", issue 4): one
# request on a list of channels (`$arg_ch` with commas, percent-encoded commas, several CHANNEL
# arguments, duplicates merged) gets the messages of all its channels after one cursor, in id order,
# each tagged with its channel, none of other channels; the 100-message limit applies across
# channels; a waiting request is woken by any of its channels; channel_first_message -N gives the
# last N of each channel; a multi-channel waiter counts once in zone stats and once per channel in
# channel info.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp json_decode);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:8m history=200 ttl=1h;
    longpoll_timeout 1s;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /m                      { longpoll_channel $arg_ch; }
        location = /mlong                  { longpoll_timeout 20s; longpoll_channel $arg_ch; }
        location = /two                    { longpoll_timeout 20s; longpoll_channel x.$arg_k y.$arg_k $arg_extra; }
        location = /last1                  { channel_first_message -1; longpoll_timeout 20s; longpoll_channel $arg_ch; }
        location = /oldest                 { channel_first_message oldest; longpoll_channel $arg_ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
        location = /stats                  { channel_stats; }
    }
CONF

sub zone_subscribers { ($t->zone_stats('/stats', 'events', port => 1) || {})->{subscribers} // -1 }

sub msgs_ok {
    my ($r, $label) = @_;
    is($r->{status}, 200, "$label: 200") or do { diag explain $r; return [] };
    my $j = json_decode($r->{body}) || {};
    my $m = $j->{messages} || [];
    is($r->{headers}{'last-event-id'}, @$m ? $m->[-1]{id} : undef, "$label: Last-Event-ID is the last message's id");
    is($j->{last_event_id}, $r->{headers}{'last-event-id'}, "$label: last_event_id equals the header");
    my $sorted = 1;
    for my $i (1 .. $#$m) { $sorted = 0 if id_cmp($m->[$i - 1]{id}, $m->[$i]{id}) >= 0 }
    ok($sorted, "$label: ids strictly increasing");
    return $m;
}

sub pairs { [ map { "$_->{channel}=$_->{id}" } @{ $_[0] } ] }

# ---- interleaved publishes on three channels (and one not subscribed): one answer in id order
my (@all, $c0);
{
    $c0 = $t->publish('ma', 'start');
    my @seq = qw(ma mb ma mc mb mb md ma mc md ma);
    for my $i (0 .. $#seq) {
        my $id = $t->publish($seq[$i], "$seq[$i]:$i");
        push @all, { channel => $seq[$i], id => $id, data => "$seq[$i]:$i" };
    }
    my @want = grep { $_->{channel} ne 'md' } @all;
    my $r = $t->poll('/m?ch=ma,mb,mc', cursor => $c0);
    my $m = msgs_ok($r, 'three channels');
    is_deeply(pairs($m), pairs(\@want), 'every message of the three channels, in publish (id) order, with its channel');
    is_deeply([ map { $_->{data} } @$m ], [ map { $_->{data} } @want ], 'their data');
    ok(!grep({ $_->{channel} eq 'md' } @$m), 'nothing of a channel not asked for');
    ok(!exists $m->[0]{event}, 'untyped messages carry no event key (not even the channel id)');

    # one cursor resumes the whole list: from the middle
    my $mid = $want[3]{id};
    $r = $t->poll('/m?ch=ma,mb,mc', cursor => $mid);
    is_deeply(pairs(msgs_ok($r, 'resume from the middle')), pairs([ @want[4 .. $#want] ]),
              'a cursor from the middle: the rest of every channel');

    # a cursor taken from a message of another channel (md) resumes too
    my ($md) = grep { $_->{channel} eq 'md' } @all;
    $r = $t->poll('/m?ch=ma,mb,mc', cursor => $md->{id});
    is_deeply(pairs(msgs_ok($r, 'cursor of an unrelated channel')),
              pairs([ grep { id_cmp($_->{id}, $md->{id}) > 0 } @want ]), 'resumes by id across channels');

    # the order of the list does not matter; percent-encoded commas work; duplicates merged
    for my $q ('mc,mb,ma', 'ma%2Cmb%2cmc', 'ma,mb,ma,mc,mb', 'mb,mc,ma,mc') {
        $r = $t->poll("/m?ch=$q", cursor => $c0);
        is_deeply(pairs(msgs_ok($r, "ch=$q")), pairs(\@want), "ch=$q: the same answer, each message once");
    }
}

# ---- the message limit (one 64-message page when answered at once) counts messages of all
# channels together
{
    my $c = $t->publish('la', 'start');
    my @ids;
    for my $i (1 .. 130) { push @ids, $t->publish($i % 2 ? 'la' : 'lb', "l$i") }
    my $r = $t->poll('/m?ch=la,lb', cursor => $c);
    my $m = msgs_ok($r, '130 across two channels');
    is(scalar @$m, 64, 'the first answer: 64 messages');
    is_deeply([ map { $_->{id} } @$m ], [ @ids[0 .. 63] ], 'the oldest 64 of the two channels');
    $r = $t->poll('/m?ch=la,lb', cursor => $r->{headers}{'last-event-id'});
    my @next = map { $_->{id} } @{ msgs_ok($r, 'the next page') };
    $r = $t->poll('/m?ch=la,lb', cursor => $r->{headers}{'last-event-id'});
    push @next, map { $_->{id} } @{ msgs_ok($r, 'the rest') };
    is_deeply(\@next, [ @ids[64 .. 129] ], 'the next polls: the other 66');
}

# ---- waiting on several channels: woken by any of them; counted once in the zone
{
    my $c = $t->publish('wa', 'x');
    my $z0 = zone_subscribers();
    for my $which ('wa', 'wb', 'wc') {
        my $p = $t->poll_start('/mlong?ch=wa,wb,wc', cursor => $c);
        ok($t->wait_for(sub { $t->subscribers('wa') == 1 && $t->subscribers('wb') == 1 && $t->subscribers('wc') == 1 }, timeout => 10),
           "waiting on wa,wb,wc: each channel counts it");
        is(zone_subscribers(), $z0 + 1, 'the zone counts it once');
        ok(!$p->ready, 'no answer yet');
        my $id = $t->publish($which, "to $which");
        my $r = $p->result(timeout => 10);
        my $m = msgs_ok($r, "woken by $which");
        is_deeply(pairs($m), [ "$which=$id" ], "woken by $which: that message, with its channel");
        cmp_ok($r->{elapsed}, '<', 10, "woken by $which: not at the timeout");
        $c = $id;
    }
    ok($t->wait_for(sub { !grep { $t->subscribers($_) } qw(wa wb wc) }, timeout => 10), 'answered: no subscriber left');
}

# ---- several CHANNEL arguments, one of them empty (skipped)
{
    my $c = $t->publish('x.k1', 'x');
    my $p = $t->poll_start('/two?k=k1', cursor => $c);
    ok($t->wait_for(sub { $t->subscribers('x.k1') == 1 && $t->subscribers('y.k1') == 1 }, timeout => 10),
       'longpoll_channel x.$arg_k y.$arg_k $arg_extra (empty): waits on x.k1 and y.k1');
    my $id = $t->publish('y.k1', 'why');
    my $r = $p->result(timeout => 10);
    is_deeply(pairs(msgs_ok($r, 'several arguments')), [ "y.k1=$id" ], 'woken by the second argument\'s channel');
    $r = $t->poll('/two?k=k1&extra=z1,z2', cursor => $c);
    is_deeply(pairs(msgs_ok($r, 'argument with a list')), [ "y.k1=$id" ], 'an argument holding a list is split too');
}

# ---- channel_first_message -1 over a list: the last message of each channel, in id order
{
    my %last;
    for my $i (1 .. 9) {
        my $ch = ('fa', 'fb', 'fc')[$i % 3];
        $last{$ch} = $t->publish($ch, "f$i");
    }
    my $r = $t->poll('/last1?ch=fa,fb,fc,fempty');
    my $m = msgs_ok($r, '-1 over four channels (one empty)');
    my @want = sort { id_cmp($a->[1], $b->[1]) } map { [ $_, $last{$_} ] } keys %last;
    is_deeply(pairs($m), [ map { "$_->[0]=$_->[1]" } @want ], 'the newest of each channel, in id order');
    cmp_ok($r->{elapsed}, '<', 2, 'at once');

    $r = $t->poll('/oldest?ch=fa,fb');
    is(scalar @{ msgs_ok($r, 'oldest over two channels') }, 6, 'oldest: everything retained of both');
}

# ---- limits of a list
{
    my $r = $t->poll('/m?ch=' . join(',', map { "n$_" } 1 .. 64));
    is($r->{status}, 204, '64 channels: accepted (204 at the timeout)');
    $r = $t->poll('/m?ch=' . join(',', map { "n$_" } 1 .. 65));
    is($r->{status}, 400, '65 channels: 400');
    $r = $t->poll('/m?ch=' . join(',', (map { "n$_" } 1 .. 64), 'n1', 'n2'));
    is($r->{status}, 204, '64 distinct channels with duplicates: accepted (duplicates count once)');
    $r = $t->poll('/m?ch=a,,b');
    is($r->{status}, 400, 'an empty item: 400');
}

done_testing;

#!/usr/bin/perl
# Multi-channel SSE streams (README "Directives", "SSE", issue 3): comma lists, several sse_channel
# arguments, a percent-encoded comma, duplicates merged, 64 channels allowed and 65 refused, untyped
# events named after their channel, ids in order across channels (published through both workers),
# one cursor resuming every channel of the stream, channel_first_message -N / oldest per channel.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest qw(id_cmp json_decode);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:8m history=200 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        location = /m                      { sse_channel $arg_ch; }
        location = /two                    { sse_channel $arg_a $arg_b; }
        location = /fixed                  { sse_channel fixed-x $arg_ch; }
        location ~ ^/events/(?<ch>[^/]+)$  { sse_channel $ch; }
        location = /last2                  { channel_first_message -2; sse_channel $arg_ch; }
        location = /oldest                 { channel_first_message oldest; sse_channel $arg_ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%% reuseport;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
        location = /stats                  { channel_stats; }
    }
CONF

sub wait_subscribed {
    my ($n, @ch) = @_;
    return $t->wait_for(sub { !grep { $t->subscribers($_) != $n } @ch }, timeout => 5);
}

sub zone_subscribers { ($t->zone_stats('/stats', 'events', port => 1) || {})->{subscribers} // -1 }

# "event/data" for each event ("-" for no event field)
sub shape { join ' ', map { ($_->{event} // '-') . '/' . ($_->{data} // '') } @_ }

# ---- a comma list: untyped events carry their channel, typed ones keep their type
{
    my $s = $t->sse_open('/m?ch=ca,cb,cc');
    is($s->status, 200, 'comma list: 200');
    ok(wait_subscribed(1, qw(ca cb cc)), 'comma list: one subscriber on each channel');
    is(zone_subscribers(), 1, 'stats: the stream counts once however many channels it holds');
    $t->publish('ca', 'to a');
    $t->publish('cb', "to b\r\nline 2");
    $t->publish('cc', 'typed', headers => { 'Event-Type' => 'alert' });
    $t->publish('cb', 'also typed', headers => { 'Event-Type' => 'cb' });
    $t->publish('nosub', 'not for us');
    $t->publish('ca', 'end');
    my @ev = $s->events_until('end');
    is(shape(@ev), "ca/to a cb/to b\nline 2 alert/typed cb/also typed ca/end",
       'events in publish order; untyped ones named after their channel');
    my @names = map { $_->[0] } @{ $ev[0]{fields} };
    is_deeply(\@names, [qw(id event data)], 'an untyped multi-channel event: id, event, data');
    $s->close;
}

# ---- several arguments; an empty argument is skipped
{
    my $s = $t->sse_open('/two?a=ta&b=tb,tc');
    is($s->status, 200, 'two arguments (one a list): 200');
    ok(wait_subscribed(1, qw(ta tb tc)), 'subscribed to the three channels');
    $t->publish('tc', 'c'); $t->publish('ta', 'a'); $t->publish('tb', 'b');
    is(shape($s->events_until('b')), 'tc/c ta/a tb/b', 'events from every argument, named');
    $s->close;

    my $one = $t->sse_open('/two?a=solo');
    is($one->status, 200, 'second argument empty: skipped, 200');
    ok(wait_subscribed(1, 'solo'), 'subscribed to the remaining channel');
    $t->publish('solo', 'x');
    my $e = $one->next_event(timeout => 5);
    is($e && shape($e), '-/x', 'a one-channel stream: no event field for an untyped message');
    $one->close;

    my $none = $t->sse_open('/two?a=&b=');
    is($none->status, 400, 'every argument empty: 400');

    my $f = $t->sse_open('/fixed?ch=fy');
    ok(wait_subscribed(1, qw(fixed-x fy)), 'a literal argument and a variable: both channels');
    $t->publish('fixed-x', '1'); $t->publish('fy', '2');
    is(shape($f->events_until('2')), 'fixed-x/1 fy/2', 'literal + variable channels');
    $f->close;
}

# ---- percent-encoded comma (as browsers encode it), percent-encoded id bytes
{
    my $s = $t->sse_open('/m?ch=pa%2Cpb%2cp%2Dc');
    is($s->status, 200, 'a%2Cb: 200');
    ok(wait_subscribed(1, qw(pa pb p-c)), 'a%2Cb%2cp%2Dc: decoded once, three channels');
    $t->publish('pb', 'b'); $t->publish('p-c', 'c'); $t->publish('pa', 'a');
    is(shape($s->events_until('a')), 'pb/b p-c/c pa/a', 'events of the decoded channels');
    $s->close;
    my $twice = $t->sse_open('/m?ch=pa%252Cpb');
    is($twice->status, 400, 'decoded once only: %252C becomes "%2C", a bad byte: 400');
}

# ---- duplicates merged
{
    my $s = $t->sse_open('/m?ch=da,da,db,da');
    is($s->status, 200, 'duplicates: 200');
    ok(wait_subscribed(1, qw(da db)), 'da,da,db,da: one subscriber on each channel');
    $t->publish('da', '1'); $t->publish('db', '2'); $t->publish('da', '3');
    is(shape($s->events_until('3')), 'da/1 db/2 da/3', 'each message once');
    $s->close;

    my $single = $t->sse_open('/two?a=dd,dd&b=dd');
    ok(wait_subscribed(1, 'dd'), 'dd in both arguments, twice: one subscription');
    $t->publish('dd', 'once');
    my @ev = $single->events_until('once');
    is(shape(@ev), '-/once', 'dd,dd + dd is a one-channel stream: once, no event field');
    $single->close;
}

# ---- 64 channels allowed, 65 refused; duplicates do not count
{
    my @ch64 = map { "k$_" } 1 .. 64;
    my $s = $t->sse_open('/m?ch=' . join(',', @ch64));
    is($s->status, 200, '64 channels: 200');
    ok(wait_subscribed(1, @ch64[0, 31, 63]), '64 channels: subscribed');
    $t->publish('k64', 'last'); $t->publish('k1', 'first');
    is(shape($s->events_until('first')), 'k64/last k1/first', '64 channels: events of the first and the last');
    $s->close;

    my $dup = $t->sse_open('/m?ch=' . join(',', @ch64, 'k1', 'k64', 'k2'));
    is($dup->status, 200, '64 distinct channels plus 3 duplicates: 200 (duplicates count once)');
    $dup->close;
    my $split = $t->sse_open('/two?a=' . join(',', @ch64[0 .. 39]) . '&b=' . join(',', @ch64[30 .. 63]));
    is($split->status, 200, '64 distinct channels over two overlapping arguments: 200');
    $split->close;

    my $mark = $t->log_mark;
    for my $case ([ '/m?ch=' . join(',', @ch64, 'k65'), '65 channels in one list' ],
                  [ '/two?a=' . join(',', @ch64[0 .. 31]) . '&b=' . join(',', @ch64[32 .. 63], 'k65'),
                    '65 channels over two arguments' ]) {
        my ($path, $label) = @$case;
        my $r = $t->sse_open($path);
        is($r->status, 400, "$label: 400");
        like($r->body // '', qr/\A[^\r\n]{1,200}\n\z/, "$label: one-line reason");
    }
    my @lines = split /\n/, $t->log_since($mark);
    is(scalar(grep { /\[info\].*"GET \/(?:m|two)\?/ } @lines), 2, '65 channels: logged at info');
    is_deeply([ grep { /\[(?:notice|warn|error|crit|alert|emerg)\]/ } @lines ], [], 'and never above');
    is($t->subscribers('k65'), 0, 'no subscription was made for the refused lists');
}

# ---- id order across channels, published through both workers
{
    my @chs = map { "o$_" } 1 .. 5;
    my $s = $t->sse_open('/m?ch=' . join(',', @chs));
    my $s2 = $t->sse_open('/m?ch=' . join(',', reverse @chs));    # likely the other worker
    ok(wait_subscribed(2, @chs), 'two streams on five channels');
    my @pub;
    for my $i (1 .. 60) {
        my $ch = $chs[($i * 7) % 5];
        push @pub, [ $t->publish($ch, "n$i"), $ch, "n$i" ];    # new connection each: either worker
    }
    for my $case ([ $s, 'stream 1' ], [ $s2, 'stream 2 (channels listed in reverse)' ]) {
        my ($st, $label) = @$case;
        my @ev = $st->events_until('n60');
        is(scalar @ev, 60, "$label: 60 events");
        is(join(' ', map { "$_->{id}:" . ($_->{event} // '') . ":$_->{data}" } @ev),
           join(' ', map { "$_->[0]:$_->[1]:$_->[2]" } @pub),
           "$label: every message in publish (id) order, each named after its channel");
        my $sorted = !grep { id_cmp($ev[$_ - 1]{id}, $ev[$_]{id}) >= 0 } 1 .. $#ev;
        ok($sorted, "$label: ids strictly increase across channels");
    }
    $_->close for $s, $s2;

    # ---- one cursor resumes all channels
    my $cursor = $pub[29][0];
    for my $i (61 .. 70) {
        my $ch = $chs[$i % 5];
        push @pub, [ $t->publish($ch, "n$i"), $ch, "n$i" ];
    }
    $t->publish('o-other', 'not in the list');
    my $r = $t->sse_open('/m?ch=' . join(',', @chs), headers => { 'Last-Event-ID' => $cursor });
    my @ev = $r->events_until('n70');
    is(join(' ', map { "$_->{id}:" . ($_->{event} // '') . ":$_->{data}" } @ev),
       join(' ', map { "$_->[0]:$_->[1]:$_->[2]" } @pub[30 .. 69]),
       'one Last-Event-ID resumes all five channels: everything after it, in id order, once');
    ok(wait_subscribed(1, @chs), 'resumed stream subscribed');
    push @pub, [ $t->publish('o3', 'n71'), 'o3', 'n71' ];
    my @live = $r->events_until('n71');
    is(shape(@live), 'o3/n71', 'then live');
    $r->close;

    my @want = grep { $_->[1] =~ /^o[24]$/ } @pub[50 .. $#pub];
    my $sub_s = $t->sse_open('/m?ch=o2,o4&last_event_id=' . $pub[49][0]);
    my @sub = $sub_s->events_until($want[-1][2]);
    is(join(' ', map { "$_->{id}:$_->{data}" } @sub), join(' ', map { "$_->[0]:$_->[2]" } @want),
       'a cursor from a wider stream resumes a subset of its channels');
    $sub_s->close;
}

# ---- channel_first_message on several channels: -N is the last N of each channel
{
    my @p;
    for my $i (1 .. 4) {
        push @p, [ $t->publish('fa', "fa$i"), "fa$i" ];
        push @p, [ $t->publish('fb', "fb$i"), "fb$i" ] if $i <= 3;
    }
    push @p, [ $t->publish('fc', 'fc1'), 'fc1' ];
    # publish order: fa1 fb1 fa2 fb2 fa3 fb3 fa4 fc1; the last two of each, in that order:
    my %keep = map { $_ => 1 } qw(fa3 fa4 fb2 fb3 fc1);
    my $want = join ' ', map { ($_->[1] =~ /^(f.)/)[0] . "/$_->[1]" } grep { $keep{ $_->[1] } } @p;
    my $l = $t->sse_open('/last2?ch=fa,fb,fc');
    is(shape($l->events_until('fc1')), $want,
       'channel_first_message -2 on three channels: the last 2 of each, merged in id order');
    $l->close;
    my $o = $t->sse_open('/oldest?ch=fb,fc');
    is(shape($o->events_until('fc1')), 'fb/fb1 fb/fb2 fb/fb3 fc/fc1', 'oldest on two channels: all retained, in id order');
    $o->close;
}

ok($t->wait_for(sub { zone_subscribers() == 0 }, timeout => 5), 'all streams closed: stats subscribers 0');

done_testing;

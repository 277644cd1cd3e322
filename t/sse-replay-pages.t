#!/usr/bin/perl
# Replay pages (issue 13): a replay formats each page of up to 64 messages in one pass when
# no message's data holds a line break, and falls back to sizing every event first when one
# does. Both kinds of page, and pages mixing them, must give exactly the bytes a live
# delivery gives: checked byte for byte against the SSE framing (README "SSE") for a
# single-channel and a multi-channel stream (where an untyped message is named by its channel).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;

my $t = ChannelsTest->new(workers => 1, conf => <<'CONF');
    channel_zone zone=events:8m history=1000 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[^/]+)$ { sse_retry 0; sse_channel $ch zone=events; }
        location = /multi                { sse_retry 0; sse_channel $arg_ch zone=events; }
        location ~ ^/pub/(?<ch>[^/]+)$    { publish_channel $ch zone=events; }
    }
CONF

# Messages 1-130 hold no line break (whole pages of either stream), 131-200 hold breaks of
# every kind now and then; some have an event type.
my @breaks = ("\n", "\r\n", "\r");
sub data_of {
    my $i = shift;
    my $d = "message $i " . ('x' x ($i % 37));
    return $d if $i <= 130;
    return $d unless $i % 5 == 0;
    return "$d$breaks[$i % 3]second line$breaks[($i + 1) % 3]" . ($i % 2 ? '' : ' third');
}

sub framed {
    my ($id, $event, $data) = @_;
    my $out = "id: $id\n";
    $out .= "event: $event\n" if defined $event && length $event;
    $out .= "data: $_\n" for split /\r\n|\r|\n/, $data, -1;
    return "$out\n";
}

my (@ids, @expect_single, @expect_multi);
for my $i (1 .. 200) {
    my $event = $i % 11 == 0 ? 'typed' : undef;
    my $ch    = $i % 2 ? 'pa' : 'pb';
    my $id    = $t->publish($ch, data_of($i), location => 'pub', port => 0,
                            ($event ? (query => "event=$event") : ()));
    push @ids, [$id, $ch, $event, data_of($i)];
}

sub replay_raw {
    my ($path, $want) = @_;
    my $s = $t->sse_open($path, headers => { 'Last-Event-ID' => '0-0' });
    is($s->status, 200, "$path: 200");
    my @got;
    while (@got < $want) {
        my $e = $s->next_event(timeout => 5) // last;
        push @got, $e;
    }
    is(scalar @got, $want, "$path: $want events replayed");
    my $raw = join '', map { $_->{raw} } @got;
    $s->close;
    return $raw;
}

# One channel: its 100 messages (pages of its own).
my $single = join '', map { framed($_->[0], $_->[2], $_->[3]) } grep { $_->[1] eq 'pa' } @ids;
is(replay_raw('/events/pa', 100), $single, 'single channel: the replay is byte for byte the SSE framing');

# Two channels merged in id order: untyped messages are named by their channel.
my $multi = join '', map { framed($_->[0], $_->[2] // $_->[1], $_->[3]) } @ids;
is(replay_raw('/multi?ch=pa,pb', 200), $multi, 'two channels: the replay is byte for byte the SSE framing');

$t->finish;
done_testing();

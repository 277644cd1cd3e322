#!/usr/bin/perl
# Issue 12, finding 5: `channel_first_message -N` on a stream of several channels gives the
# last N messages of each channel, in id order, and never a message older than a channel's
# last-N window, on any replay page (README "channel_first_message", "SSE").
#
# The windows are chosen so that the replay needs more than one page (by bytes: 100 KB
# messages, by count: more than 64 messages) while another channel holds messages older than
# its window but newer than where the first page ends. Pings every second keep even a
# stalling replay moving (issue 12, finding 1, is tested on its own). After the replay a live
# message must follow.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=firstn:32m history=1000 ttl=1h;
    client_max_body_size 1m;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /last3  { channel_first_message -3;  sse_ping 1s; sse_channel $arg_ch; }
        location = /last64 { channel_first_message -64; sse_ping 1s; sse_channel $arg_ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.-]+)$ { publish_channel $ch; }
    }
CONF

# Publishes $n messages of $size bytes to $ch; returns their labels ("ch#i").
sub fill {
    my ($ch, $n, $size) = @_;
    my @labels;
    for my $i (1 .. $n) {
        my $label = "$ch#$i";
        $t->publish($ch, $label . ':' . ('y' x ($size - length($label) - 1)));
        push @labels, $label;
    }
    return @labels;
}

sub label { my $d = shift // ''; $d =~ /^([^:]*)/ ? $1 : $d }

# Reads the stream until the live message; returns the labels in arrival order.
sub read_until_live {
    my ($s, $live) = @_;
    my @got;
    while (my $ev = $s->next_event(timeout => 8)) {
        push @got, label($ev->{data});
        last if $got[-1] eq $live;
    }
    return @got;
}

sub check {
    my (%o) = @_;
    my $s = $t->sse_open("$o{location}?ch=" . join(',', @{ $o{channels} }));
    is($s->status, 200, "$o{name}: stream opened");
    my $live = "live-$o{name}";
    $t->publish($o{channels}[0], $live);
    my @got = read_until_live($s, $live);
    my %window = map { $_ => 1 } @{ $o{want} };
    my @older = grep { !$window{$_} && $_ ne $live } @got;
    is_deeply(\@older, [], "$o{name}: no message older than its channel's window")
        or diag(scalar(@older) . ' such messages, e.g. ' . join(' ', @older[0 .. ($#older < 7 ? $#older : 7)]));
    is_deeply(\@got, [ @{ $o{want} }, $live ], "$o{name}: every channel's last N in id order, then live")
        or diag('got ' . scalar(@got) . ' events: ' . join(' ', @got[0 .. ($#got < 12 ? $#got : 12)]) . ' ...');
    $s->close;
}

# Pages cut by bytes: 100 KB messages, two to a page.
{
    my @a = fill('bya', 5, 100_000);
    my @b = fill('byb', 10, 50);
    check(name => 'byte pages', location => '/last3', channels => [qw(bya byb)],
          want => [ @a[2 .. 4], @b[7 .. 9] ]);
}

# Pages cut by count: 64 messages of one channel fill the first page.
{
    my @a = fill('cnta', 64, 20);
    my @b = fill('cntb', 200, 20);
    check(name => 'count pages', location => '/last64', channels => [qw(cnta cntb)],
          want => [ @a, @b[136 .. 199] ]);
}

# Three channels interleaved, listed newest window first.
{
    my @a = fill('ixa', 4, 120_000);
    my @b = fill('ixb', 8, 30);
    my @c = fill('ixc', 2, 90_000);
    push @b, map { my $l = 'ixb#' . (8 + $_); $t->publish('ixb', "$l:" . ('z' x 30)); $l } 1 .. 5;
    check(name => 'three channels', location => '/last3', channels => [qw(ixc ixb ixa)],
          want => [ @a[1 .. 3], @c, @b[10 .. 12] ]);
}

done_testing;

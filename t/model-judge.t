#!/usr/bin/perl
# The model of t/model.t (t/lib/Model/Judge.pm) against hand-made traces: a correct one passes,
# and each kind of wrong behaviour it must catch is caught by the rule meant for it — so the
# random test can fail, and fails for the right reason. No nginx here.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Model::Judge;

my $T0 = 1_800_000_000;   # seconds; ids below are ms of the same clock
sub id { my ($dt, $seq) = @_; sprintf('%d-%d', ($T0 + $dt) * 1000, $seq // 0) }

# A trace with messages published to channels A and B at the given times (seconds after T0).
sub trace {
    my (%o) = @_;
    my $tr = {
        seed => 0, zone => $o{zone} // 'big', history => $o{history} // 1000, ttl_ms => $o{ttl_ms} // 3_600_000,
        evicts => $o{evicts} // 0, t0 => $T0, chan => [qw(A B)], deletes => [], reloads => [], kills => [],
        clients => [], barriers => [], problems => [], log => [], t_end => $T0 + 10, drain => { ok => 1 },
        publishes => [],
    };
    for my $p (@{ $o{pubs} }) {
        my ($label, $ch, $t) = @$p;
        my $id = id($t);
        push @{ $tr->{publishes} }, { label => $label, ch => $ch eq 'A' ? 0 : 1, channel => $ch, data => "$label:data",
            t_send => $T0 + $t - 0.001, t_ack => $T0 + $t + 0.001, status => 201, id => $id, end => 'clean',
            json => { channel => $ch, id => $id, subscribers => 1, messages => 1 } };
    }
    return $tr;
}

sub pub { my ($tr, $label) = @_; (grep { $_->{label} eq $label } @{ $tr->{publishes} })[0] }

# An SSE event for a published message, as a single-channel stream shows it.
sub ev { my ($tr, $label, $t, %o) = @_; my $m = pub($tr, $label); { t => $T0 + $t, id => $m->{id}, data => $m->{data}, %o } }

sub sse {
    my ($tr, %o) = @_;
    my $chs = $o{channels} // ['A'];
    push @{ $tr->{clients} }, { n => scalar @{ $tr->{clients} }, kind => 'sse', proto => '1.1', format => 'json',
        mode => $o{mode} // 'new', reading => 'fast', channel_ids => $chs,
        conns => [ { t_req => $T0 + ($o{t} // 0), t_head => $T0 + ($o{t} // 0) + 0.001, t_end => $T0 + 9, status => 200,
                     headers => { 'content-type' => 'text/event-stream; charset=utf-8' }, header_cursor => $o{cursor},
                     channels => $chs, events => $o{events}, end => 'closed', paused => [] } ] };
}

sub rules { my $tr = shift; my %r; $r{ $_->{rule} }++ for Model::Judge->new($tr)->divergences; join ' ', sort keys %r }

my @pubs = ([m1 => A => 1], [m2 => A => 2], [m3 => A => 3], [n1 => B => 2.5]);

{
    my $tr = trace(pubs => \@pubs);
    sse($tr, cursor => id(0.5), t => 0.5, events => [ map { ev($tr, $_, 4) } qw(m1 m2 m3) ]);
    is(rules($tr), '', 'a stream that gets every message after its cursor, in order: no divergence');
}
{
    my $tr = trace(pubs => \@pubs);
    sse($tr, t => 0.5, events => [ map { ev($tr, $_, 4) } qw(m1 m2 m3) ]);
    is(rules($tr), '', 'no cursor, first_message newest, attached before m1: everything');
}
{
    my $tr = trace(pubs => \@pubs);
    sse($tr, cursor => id(0.5), t => 0.5, events => [ map { ev($tr, $_, 4) } qw(m1 m3) ]);
    is(rules($tr), 'S5', 'm2 skipped while retained: S5 (missing, not lost)');
}
{
    my $tr = trace(pubs => \@pubs);
    sse($tr, cursor => id(0.5), t => 0.5, events => [ map { ev($tr, $_, 4) } qw(m1 m2 m2 m3) ]);
    is(rules($tr), 'S2', 'm2 twice: S2 (ids must strictly increase)');
}
{
    my $tr = trace(pubs => \@pubs);
    sse($tr, cursor => id(0.5), t => 0.5, events => [ map { ev($tr, $_, 4) } qw(m2 m1 m3) ]);
    like(rules($tr), qr/^S2/, 'm2 before m1: S2');
}
{
    my $tr = trace(pubs => \@pubs);
    sse($tr, cursor => id(0.5), t => 0.5, events => [ ev($tr, 'm1', 4), ev($tr, 'm2', 4), ev($tr, 'n1', 4), ev($tr, 'm3', 4) ]);
    is(rules($tr), 'S3', 'a message of a channel the stream does not hold: S3');
}
{
    my $tr = trace(pubs => \@pubs);
    sse($tr, cursor => id(0.5), t => 0.5, events => [ ev($tr, 'm1', 4), ev($tr, 'm2', 4, data => 'other'), ev($tr, 'm3', 4) ]);
    is(rules($tr), 'S3', 'other data: S3');
}
{
    my $tr = trace(pubs => \@pubs);
    sse($tr, cursor => id(0.5), t => 0.5, events => [ ev($tr, 'm1', 4),
        { t => $T0 + 4, event => 'channel-gap', data => '{"channel":"A","last_event_id":"' . id(1) . '","oldest_event_id":null}' },
        ev($tr, 'm2', 4), ev($tr, 'm3', 4) ]);
    is(rules($tr), 'S6', 'a channel-gap though nothing was lost: S6');
}
{
    my $tr = trace(pubs => \@pubs, zone => 'hist', history => 1);
    sse($tr, cursor => id(0.5), t => 0.5, events => [ ev($tr, 'm3', 4) ]);
    is(rules($tr), 'S5', 'history 1: m1, m2 trimmed before the stream read them, no channel-gap: S5');
    $tr = trace(pubs => \@pubs, zone => 'hist', history => 1);
    sse($tr, cursor => id(0.5), t => 0.5, events => [
        { t => $T0 + 4, event => 'channel-gap', data => '{"channel":"A","last_event_id":"' . id(0.5) . '","oldest_event_id":"' . id(3) . '"}' },
        ev($tr, 'm3', 4) ]);
    is(rules($tr), '', 'the same announced with channel-gap first: no divergence');
}
{
    my $tr = trace(pubs => \@pubs);
    sse($tr, t => 2.6, mode => 'last3', events => [ map { ev($tr, $_, 4) } qw(m1 m2 m3) ]);
    is(rules($tr), '', 'first_message -3: the last 3');
    $tr = trace(pubs => [ @pubs, [m4 => A => 3.5] ]);
    sse($tr, t => 3.6, mode => 'last3', events => [ map { ev($tr, $_, 4) } qw(m1 m2 m3 m4) ]);
    is(rules($tr), 'S4', 'first_message -3 giving 4: S4 (older than its window)');
}
{
    my $tr = trace(pubs => \@pubs);
    push @{ $tr->{deletes} }, { channel => 'B', ch => 1, t_send => $T0 + 3.5, t_ack => $T0 + 3.51, status => 200, json => { channel => 'B' } };
    my $marker = sprintf '%d-0', ($T0 + 3.5) * 1000;
    my $del = { t => $T0 + 4, id => $marker, event => 'channel-deleted', data => '{"channel":"B"}' };
    sse($tr, channels => [qw(A B)], cursor => id(0.5), t => 0.5,
        events => [ ev($tr, 'm1', 4, event => 'A'), ev($tr, 'm2', 4, event => 'A'), ev($tr, 'n1', 4, event => 'B'), ev($tr, 'm3', 4, event => 'A'), $del ]);
    is(rules($tr), '', 'channel-deleted after the older messages: no divergence');
    $tr->{clients} = [];
    sse($tr, channels => [qw(A B)], cursor => id(0.5), t => 0.5,
        events => [ ev($tr, 'm1', 4, event => 'A'), $del, ev($tr, 'm2', 4, event => 'A'), ev($tr, 'm3', 4, event => 'A') ]);
    like(rules($tr), qr/S2/, 'channel-deleted overtaking older messages: S2');
}
{
    # B deleted at +2.7 s, then m3 to A: in a zone that evicts, m3 may evict the deletion
    # marker before the stream's worker read it; the stream is then told channel-gap for B
    # (README "Publishing", "SSE") instead of channel-deleted (the S7 divergence of seed 300133).
    my @p = ([m1 => A => 1], [m2 => A => 2], [n1 => B => 2.5], [m3 => A => 3]);
    my $run = sub {
        my ($gap, %o) = @_;
        my $tr = trace(pubs => \@p, evicts => $o{evicts} // 1);
        push @{ $tr->{deletes} }, { channel => 'B', ch => 1, t_send => $T0 + 2.7, t_ack => $T0 + 2.71, status => 200, json => { channel => 'B' } };
        my $g = { t => $T0 + 3.2, event => 'channel-gap', data => $gap };
        my @e = (ev($tr, 'm1', 3.1, event => 'A'), ev($tr, 'm2', 3.1, event => 'A'), ev($tr, 'n1', 3.1, event => 'B'));
        my $m3 = ev($tr, 'm3', 3.3, event => 'A');
        sse($tr, channels => [qw(A B)], mode => 'old', t => 0.5,
            events => [ @e, $o{late} ? ($m3, { %$g, t => $T0 + 3.4 }) : $gap ? ($g, $m3) : ($m3) ]);
        return rules($tr);
    };
    my $gap = sub { my ($ch, $oldest) = @_; sprintf '{"channel":"%s","last_event_id":"%s","oldest_event_id":%s}', $ch, id(2.5), $oldest ? qq("$oldest") : 'null' };
    is($run->($gap->('B')), '', 'the marker evicted unread, channel-gap for B before m3: no divergence');
    is($run->($gap->('B', id(3))), '', '... its oldest_event_id m3 (above the marker): no divergence');
    is($run->(undef), 'S7', 'neither channel-deleted nor channel-gap for B before m3: S7');
    like($run->($gap->('B'), late => 1), qr/\bS7\b/, 'channel-gap for B only after m3: S7');
    is($run->($gap->('B', id(2.5))), 'S7', 'channel-gap for B saying n1 (older than the DELETE) is retained: S7');
    is($run->($gap->('B'), evicts => 0), 'S6 S7', 'a zone that never evicts (the marker kept): S7, and the gap S6');
    is($run->($gap->('A')), 'S6 S7', 'channel-gap for A, not B: S7, and the gap S6');
}
{
    # A future cursor a little before the DELETE's time, yet after its marker: nginx stamps
    # ids with its cached time, older than the request by a turn of its event loop (seed
    # 203749, big zone). Another stream was told the marker's id.
    my @p = ([m1 => A => 1], [m2 => A => 2], [n1 => B => 2.5], [m3 => A => 3]);
    my $run = sub {
        my ($cursor_dt) = @_;
        my $tr = trace(pubs => \@p);
        push @{ $tr->{deletes} }, { channel => 'B', ch => 1, t_send => $T0 + 2.7, t_ack => $T0 + 2.71, status => 200, json => { channel => 'B' } };
        my $del = { t => $T0 + 3.1, id => id(2.6), event => 'channel-deleted', data => '{"channel":"B"}' };
        sse($tr, channels => [qw(A B)], cursor => id(0.5), t => 0.5,
            events => [ ev($tr, 'm1', 3.1, event => 'A'), ev($tr, 'm2', 3.1, event => 'A'), ev($tr, 'n1', 3.1, event => 'B'), $del,
                        ev($tr, 'm3', 3.2, event => 'A') ]);
        sse($tr, channels => [qw(A B)], cursor => id($cursor_dt), t => 0.5, events => [ ev($tr, 'm3', 3.2, event => 'A') ]);
        return rules($tr);
    };
    is($run->(2.62), '', 'a future cursor past the marker (told to another stream), before the DELETE was sent: no channel-deleted due');
    is($run->(2.55), 'S7', 'a future cursor before the marker: channel-deleted due, S7');
}
{
    my $tr = trace(pubs => \@pubs);
    $tr->{publishes}[2]{id} = $tr->{publishes}[1]{id};
    $tr->{publishes}[2]{json}{id} = $tr->{publishes}[1]{id};
    like(rules($tr), qr/P2/, 'an id handed out twice: P2');
}
{
    # long-poll: cursor after m1; the answer skips m2 (lost to history) without "gap":true
    my $tr = trace(pubs => \@pubs, zone => 'hist', history => 1);
    push @{ $tr->{clients} }, { n => 0, kind => 'poll', proto => '1.1', format => 'json', mode => 'new', reading => 'fast',
        channel_ids => ['A'], conns => [ { t_req => $T0 + 4, t_end => $T0 + 4.01, status => 200, cursor_sent => id(1), cursor_in => 'header',
            channels => ['A'], chain_start => 1, format => 'json', end => 'clean',
            headers => { 'cache-control' => 'no-cache', 'last-event-id' => id(3), 'content-type' => 'application/json' },
            json => { messages => [ { id => id(3), channel => 'A', data => 'm3:data', content_type => 'text/plain' } ], last_event_id => id(3) } } ] };
    is(rules($tr), 'L2', 'long-poll: m2 lost without "gap":true: L2');
    $tr->{clients}[0]{conns}[0]{json}{gap} = 1;
    is(rules($tr), '', 'with "gap":true: no divergence');
    $tr->{clients}[0]{conns}[0]{headers}{'cache-control'} = 'max-age=5';
    is(rules($tr), 'L0', 'without Cache-Control: no-cache: L0');
}
{
    # the zone at the end: B's n1 kept though the newer m3 of A was lost in a zone that evicts
    my $tr = trace(pubs => \@pubs, zone => 'tiny', evicts => 1);
    $tr->{readback} = { 0 => { t_first => $T0 + 5, t => $T0 + 5, messages => [] },
                        1 => { t_first => $T0 + 5, t => $T0 + 5, messages => [ map { { id => pub($tr, $_)->{id}, data => "$_:data" } } qw(n1) ] } };
    is(rules($tr), 'R3', 'evicted m3 but kept the older n1: R3 (oldest first)');
    $tr->{readback}{0}{messages} = [ { id => pub($tr, 'm1')->{id}, data => 'm1:data' } ];
    is(rules($tr), 'R1 R3', 'kept m1 of A but not the newer m2, m3: R1 (not a suffix), R3');
    $tr->{readback}{0}{messages} = [ { id => pub($tr, 'm3')->{id}, data => 'm3:data' } ];
    $tr->{readback}{1}{messages} = [];
    is(rules($tr), '', 'm1, m2, n1 evicted, m3 kept: a suffix, no divergence');
    $tr->{evicts} = 0;
    is(rules($tr), 'R3', 'the same in a zone that never evicts: R3');
}

# A 507 "message too large for zone" in a zone that evicts: excused for a message over 1/16
# of the zone (no run of free pages long enough, README "No room"), not for a smaller one,
# nor in a zone that never evicts, nor with another answer.
{
    my $refuse = sub {
        my (%o) = @_;
        my $tr = trace(pubs => [[m1 => A => 1]], evicts => $o{evicts} // 1);
        $tr->{zone_bytes} = 1 << 20;
        my $m = pub($tr, 'm1');
        $m->{data} = 'x' x $o{size};
        @$m{qw(status answer json id)} = (507, $o{answer} // "message too large for zone\n", undef, undef);
        return rules($tr);
    };
    is($refuse->(size => 261_247), '', '507 for a 261 KB message in a 1 MB zone that evicts: excused');
    is($refuse->(size => 60_000), 'P1', '507 for a 60 KB message in a 1 MB zone: P1');
    is($refuse->(size => 261_247, evicts => 0), 'P1', '507 in a zone that never evicts: P1');
    is($refuse->(size => 261_247, answer => "zone full\n"), 'P1', 'another 507 answer: P1');
}

# A worker killed in the middle of a zone update (the error log names it: the kill is
# "torn"): the zone was rebuilt empty (README "Errors and failures", seed 314055). A stream
# attaching afterwards with first_message oldest gets only what came after; a stream that
# was live must be told (channel-gap) of what it lost.
{
    my @p = ([m1 => A => 1], [m2 => A => 2], [m3 => A => 3], [m4 => A => 4.5]);
    my $run = sub {
        my (%o) = @_;
        my $tr = trace(pubs => \@p);
        push @{ $tr->{kills} }, { t => $T0 + 3.5, t_ready => $T0 + 3.6, pid => 42, torn => $o{torn} };
        if ($o{live}) {
            my @e = (ev($tr, 'm1', 1.1), $o{gap} ? ({ t => $T0 + 3.7, event => 'channel-gap', data => sprintf('{"channel":"A","last_event_id":"%s","oldest_event_id":null}', id(1)) }) : (), ev($tr, 'm4', 4.6));
            sse($tr, cursor => id(0.5), t => 0.5, events => \@e);
        } else {
            sse($tr, mode => 'old', t => 4, events => [ ev($tr, 'm4', 4.6) ]);
        }
        return rules($tr);
    };
    is($run->(torn => 1), '', 'oldest after a torn kill: only m4, no divergence');
    is($run->(torn => 0), 'S5', 'oldest after a kill outside an update: m1-m3 missing, S5');
    is($run->(torn => 1, live => 1, gap => 1), '', 'live through a torn kill, told with channel-gap: no divergence');
    is($run->(torn => 1, live => 1), 'S5', 'live through a torn kill, m2-m3 skipped untold: S5');
}

# A long-poll answer cut off after its header (seed 319943: its worker killed while sending
# 185 KB over HTTP/2 to a slow reader): excused near a kill, L0 otherwise.
{
    my $run = sub {
        my (%o) = @_;
        my $tr = trace(pubs => \@pubs);
        push @{ $tr->{kills} }, { t => $T0 + 4.005, t_ready => $T0 + 4.1, pid => 42 } if $o{kill};
        push @{ $tr->{clients} }, { n => 0, kind => 'poll', proto => 'h2', format => 'json', mode => 'new', reading => 'slow',
            channel_ids => ['A'], conns => [ { t_req => $T0 + 4, t_end => $T0 + 4.01, status => 200, cursor_sent => id(2.5), cursor_in => 'header',
                channels => ['A'], chain_start => 1, format => 'json', end => 'eof', body => '{"messages":[{"id":"' . id(3) . '","chan',
                headers => { 'cache-control' => 'no-cache', 'last-event-id' => id(3), 'content-type' => 'application/json' } } ] };
        return rules($tr);
    };
    is($run->(kill => 1), '', 'a long-poll answer cut off by a kill: no divergence');
    is($run->(), 'L0', 'a long-poll answer cut off with no kill or reload: L0');
}

done_testing;

package Model::Judge;

=encoding utf8

=head1 NAME

Model::Judge - the executable model of README.md ("Publishing", "channel_zone", "SSE", "Long
polling") that a schedule's trace is checked against

=head1 SYNOPSIS

    my @divergences = Model::Judge->new($trace)->divergences;
    print Model::Judge->new($trace)->report;        # seed, schedule, every divergence with a diff

=head1 THE MODEL

A trace (L<Model::Runner>) says what was sent when and what came back. The model does not
predict one outcome: where timing makes several outcomes legal it accepts exactly those.
Its one notion of timing is C<maybe_lost(m, T)>: could message C<m> be gone by time C<T>?

    deleted   a DELETE of its channel was sent before T and had not finished before m was sent
    history   `history` newer messages of its channel were sent before T    (README "channel_zone")
    ttl       T is past its publish time (the ms of its id) plus ttl       (README "channel_zone")
    evicted   (only in a zone that evicts) any publish or DELETE was sent after m
              and before T: the zone evicts its oldest messages first      (README "channel_zone")
    rebuilt   a worker was killed before T in the middle of a zone update (the error log
              names it), and m was sent before the kill: the zone was rebuilt empty
                                                             (README "Errors and failures")

Nothing else loses a message: not a subscriber arriving (README "What one client can cost"),
not a reload ("SSE": the zone's messages survive it), not a worker killed outside a zone
update ("Errors and failures": the zone stays consistent).

=head2 What a subscriber must get (README "SSE", "Long polling")

A connection (one SSE stream, or one long-poll request) answers for the messages of its
channels with ids after its B<start> and up to the newest id it received (the stream cannot
come back to an older id):

    a cursor (Last-Event-ID header, or last_event_id argument)   start = the cursor
    no cursor, or a malformed one (README "SSE": treated as absent):
      newest      start = the zone's position when the request attached: above every
                  message acknowledged before the request, below every message sent after
                  the response header (in between: one threshold, whichever fits)
      oldest      everything retained when it attached: a message already gone then
                  needs no notice
      -3          the last 3 of each channel when it attached (same)

Each such message is B<received> once, in id order, with its data, event type (or, on a
stream of several channels, the channel id) — or it is B<lost> (C<maybe_lost> by the time the
stream moved past it) B<and announced>: a C<channel-gap> of its channel (long-poll:
C<"gap":true>) before the stream moves past it, so that a client resuming from its cursor
cannot skip it unknowingly; a message lost to a DELETE may instead be announced by the
channel's C<channel-deleted>.

A connection never receives a message it could not have had: of another channel, at or
below its start, deleted, trimmed by history or expired before it connected, older than
its first-message window, or of a channel it left (C<channel-deleted>). A C<channel-gap> is
sent only when something was lost: a message of that channel after the gap's
C<last_event_id> that the connection never receives — or, as the zone keeps the history
floor of collected channels zone-wide (README "channel_zone"), any message of the zone after it that may be lost.
After a DELETE of one of its channels, a connection that goes on past the DELETE has
received C<channel-deleted> for it first; a long-poll waiting then answers 410.

Liveness: at a barrier every client reading at full speed has, within 5 s, every message
of its channels published so far (or it was lost); at the end every client gets "END".
A stream ends only when it has no channel left, on a reload or kill, or when the client
stalled (a slow client may be cut off, README "SSE").

=head2 Publishing and what the zone keeps (README "Publishing", "channel_zone")

Every publish is answered 201 with its id (a worker killed while it was in flight excuses
a missing answer); ids are unique, strictly increase in the order publishes complete, and
are above every id handed out before the schedule. DELETE answers 200, or 404 when the
channel may not exist. At the end, the zone retains of each channel a suffix of what was
published to it (at most `history`, nothing expired, nothing deleted), and what the zone
as a whole lost beyond history, ttl and DELETE is older than everything it kept (oldest
first) — and nothing at all in a zone that never has to evict.

=head2 The rules, as divergences name them

Each rule names the README.md section that states it: C<pub> "Publishing", C<ids>
"Publishing" (message ids), C<zone> "channel_zone", C<sse> "SSE", C<poll> "Long polling",
C<cost> "What one client can cost".

    P1 pub   a publish is answered 201 {channel, id, subscribers, messages 1..history}
    P2 ids   ids unique, increasing in completion order, above the ids of earlier schedules
    D1 pub   DELETE: 200 with the channel, or 404 only when it may not exist
    S0 sse   a stream answers 200 text/event-stream (no answer only around a kill or reload)
    S1 sse   every block is a message (id, data), a channel-gap, a channel-deleted, or retry
    S2 sse   ids strictly increase along a stream (and exceed its cursor)
    S3 sse   a message is a published one of a channel the stream holds, with its data and
             event (or the channel id on a stream of several channels)
    S4 sse   nothing it could not have had (deleted, trimmed, expired, outside its window)
    S5 sse   every message after its start up to its newest id: received, or lost and announced
    S6 sse   every channel-gap announces a real loss; its last_event_id is the client's cursor
    S7 pub   channel-deleted only after a DELETE, and before anything published after it
    S8 sse   the server ends a stream only with no channel left, on reload/kill, or a stalled client
    L0 poll  200/204/410 with Cache-Control: no-cache and a valid Last-Event-ID
    L1 poll  the messages of an answer: published, its channels, in order, exact data (base64
             exactly when not UTF-8), event, content type; ≤ 100 and ≤ 1 MiB unless one
    L2 poll  nothing missing within an answer (or "gap":true); 204 keeps the cursor and hides
             nothing retained
    L3 poll  410 only for a DELETE while it waited or after its cursor; "gap":true only for a real loss
    V1 sse   a barrier: every client reading at full speed has it all within 5 s
    V2 sse   the END of every channel reaches every client within 15 s
    R0-R6    the zone at the end (read back): R1 suffix per channel, R2 ≤ history, R3 oldest
             first / nothing lost without eviction, R4 nothing expired, R5 nothing deleted,
             R6 the data as published (R0 poll, R5 pub, the others zone)
    E1 cost  no [alert], [crit], [emerg] or sanitizer line in the error log (but a kill's own)
    H1       the harness could not do what the schedule says (nginx did not reload, ...)

Two choices where README.md leaves room: a cursor in the header wins over the argument (the
server reads the header first); and for long-poll with C<channel_first_message -N> only the
first answer is held to the window — later requests carry a plain cursor, after which
everything newer is legal (a single cursor cannot express per-channel windows).

=cut

use strict;
use warnings;
use Exporter 'import';
use JSON::PP ();
use MIME::Base64 ();
use Encode ();
use ChannelsTest::SseParser;

our @EXPORT_OK = qw(valid_id key id_gt cursor_of);

# Cpanel::JSON::XS when installed (Debian: libcpanel-json-xs-perl): many times faster on MBs
my $JSON = eval { require Cpanel::JSON::XS; Cpanel::JSON::XS->new->utf8->allow_nonref } || JSON::PP->new->utf8->allow_nonref;

# ---------------------------------------------------------------- ids

sub valid_id { defined $_[0] && $_[0] =~ /^(\d{1,20})-(\d{1,10})$/ && $2 <= 4294967295 }
sub key { my ($ms, $seq) = split /-/, shift; sprintf '%020s%010s', $ms, $seq }
sub id_gt { key($_[0]) gt key($_[1]) }
sub id_ms { (split /-/, shift)[0] }

# The cursor a connection sent, as the server must read it (README "SSE"): the header when
# present, else the argument; a malformed one counts as none.
sub cursor_of {
    my $c = shift;
    my $text = defined $c->{header_cursor} && length $c->{header_cursor} ? $c->{header_cursor}
             : defined $c->{cursor_sent} && ($c->{cursor_in} // '') eq 'header' && length $c->{cursor_sent} ? $c->{cursor_sent}
             : defined $c->{arg_cursor} ? $c->{arg_cursor}
             : defined $c->{cursor_sent} && ($c->{cursor_in} // '') eq 'arg' ? $c->{cursor_sent}
             : undef;
    return valid_id($text) ? $text : undef;
}

# ---------------------------------------------------------------- set-up

sub new {
    my ($class, $tr) = @_;
    my $self = bless { tr => $tr, div => [] }, $class;
    my (%by_id, %by_label, %by_channel);
    for my $m (@{ $tr->{publishes} }) {
        $m->{t_end} = $m->{t_ack} // ($m->{http} && $m->{http}{t_end});
        $m->{acked} = ($m->{status} // 0) == 201 && valid_id($m->{id}) ? 1 : 0;
        # no answer at all: it may or may not have been published
        $m->{maybe} = !$m->{acked} && !($m->{status} // 0) ? 1 : 0;
        $m->{key} = key($m->{id}) if $m->{acked};
        $by_id{ $m->{id} } = $m if $m->{acked};
        $by_label{ $m->{label} } = $m;
        push @{ $by_channel{ $m->{channel} } }, $m if $m->{acked} || $m->{maybe};
    }
    for my $list (values %by_channel) {
        @$list = sort { ($a->{key} // '9') cmp ($b->{key} // '9') } @$list;
    }
    $self->{by_id} = \%by_id;
    $self->{by_label} = \%by_label;
    $self->{by_channel} = \%by_channel;
    $self->{acked} = [ sort { $a->{key} cmp $b->{key} } grep { $_->{acked} } @{ $tr->{publishes} } ];
    return $self;
}

sub tr { $_[0]{tr} }
sub inf { 9e99 }

# ---------------------------------------------------------------- could it be gone?

# Why message $m may be gone by time $t (undef: it must still be there). See THE MODEL.
sub maybe_lost {
    my ($self, $m, $t) = @_;
    my $tr = $self->{tr};
    my $m_end = $m->{t_end} // inf();
    for my $d (@{ $tr->{deletes} }) {
        next unless $d->{channel} eq $m->{channel};
        return 'deleted' if $d->{t_send} < $t && ($d->{t_ack} // inf()) > $m->{t_send};
    }
    my $newer = 0;
    for my $x (@{ $self->{by_channel}{ $m->{channel} } || [] }) {
        next if $x == $m || $x->{t_send} >= $t;
        my $after = $x->{acked} && $m->{acked} ? $x->{key} gt $m->{key} : ($x->{t_end} // inf()) > $m->{t_send};
        $newer++ if $after;
    }
    return 'history' if $newer >= $tr->{history};
    # (the kill's time is taken just before the signal: allow for its delivery)
    return 'rebuilt' if grep { $_->{torn} && $_->{t} < $t && $m->{t_send} < $_->{t} + 0.05 } @{ $tr->{kills} };
    return 'ttl' if $m->{acked} && $t * 1000 + 100 >= id_ms($m->{id}) + $tr->{ttl_ms};
    if ($tr->{evicts}) {
        for my $x (@{ $tr->{publishes} }, @{ $tr->{deletes} }) {
            next if $x == $m;
            return 'evicted' if $x->{t_send} < $t && ($x->{t_end} // $x->{t_ack} // inf()) > $m->{t_send};
        }
    }
    return undef;
}

# Could the zone's history floor be above $cursor by time $t (a message of the zone after
# it gone: a channel collected since carries the floor to new channels, README "channel_zone")?
sub floor_above {
    my ($self, $cursor, $t) = @_;
    for my $m (@{ $self->{acked} }) {
        next if defined $cursor && $m->{key} le key($cursor);
        return 1 if $self->maybe_lost($m, $t);
    }
    return 0;
}

sub kill_or_reload_near {
    my ($self, $from, $to) = @_;
    my $tr = $self->{tr};
    for my $k (@{ $tr->{kills} }) { return "kill at " . $self->rel($k->{t}) if $k->{t} <= $to + 0.05 && ($k->{t_ready} // inf()) + 1 >= $from }
    for my $r (@{ $tr->{reloads} }) { return "reload at " . $self->rel($r->{t}) if $r->{t} <= $to + 0.05 && ($r->{t_ready} // inf()) + 25 >= $from }
    return undef;
}

sub rel { my ($self, $t) = @_; defined $t ? sprintf('+%.3fs', $t - $self->{tr}{t0}) : '?' }

# ---------------------------------------------------------------- reporting

# Where README.md states each rule (the tags of the rules table above).
my %SECTION = (pub => 'Publishing', ids => 'Publishing', zone => 'channel_zone', sse => 'SSE',
               poll => 'Long polling', cost => 'What one client can cost');

sub diverge {
    my ($self, $rule, $tag, $where, $text, @listing) = @_;
    push @{ $self->{div} }, { rule => $rule, section => defined $tag ? $SECTION{$tag} : undef, where => $where,
                              text => $text, listing => \@listing };
}

sub divergences {
    my $self = shift;
    return @{ $self->{div} } if $self->{done}++;
    $self->check_publishes;
    $self->check_deletes;
    for my $c (@{ $self->{tr}{clients} }) {
        if ($c->{kind} eq 'sse') { $self->check_sse_client($c) } else { $self->check_poll_client($c) }
    }
    $self->check_liveness;
    $self->check_readback;
    $self->check_log;
    return @{ $self->{div} };
}

sub report {
    my $self = shift;
    my @d = $self->divergences;
    my $tr = $self->{tr};
    my @out = ("divergence(s) in schedule seed $tr->{seed} (replay: MODEL_SEEDS=$tr->{seed} prove -v t/model.t)",
               $tr->{schedule}->describe, '  channels: ' . join(' ', map { "ch$_=$tr->{chan}[$_]" } 0 .. $#{ $tr->{chan} }));
    my $n = 0;
    for my $d (@d) {
        last if ++$n > 12;
        my $section = defined $d->{section} ? qq{, README "$d->{section}"} : '';
        push @out, "[$d->{rule}$section] $d->{where}: $d->{text}";
        push @out, map { "      $_" } @{ $d->{listing} };
    }
    push @out, '... and ' . (@d - 12) . ' more' if @d > 12;
    return join "\n", @out;
}

sub chname {
    my ($self, $channel) = @_;
    my $chs = $self->{tr}{chan};
    my ($i) = grep { $chs->[$_] eq $channel } 0 .. $#$chs;
    return defined $i ? "ch$i" : $channel;
}

sub mdesc {
    my ($self, $m) = @_;
    return sprintf('%s %s %s (%d B%s, sent %s%s)', $m->{id} // '(no id)', $self->chname($m->{channel}), $m->{label},
        length($m->{data}), defined $m->{event} ? ", event '$m->{event}'" : '', $self->rel($m->{t_send}),
        $m->{acked} ? ', acked ' . $self->rel($m->{t_ack}) : ' , unanswered');
}

sub client_desc {
    my ($self, $c, $i, $what) = @_;
    return sprintf('client c%d (%s over %s on %s, first_message %s, %s reader) %s %d (%s)', $c->{n},
        $c->{kind} eq 'sse' ? 'SSE' : "long-poll $c->{format}", $c->{proto},
        join(',', map { $self->chname($_) } @{ $c->{channel_ids} }), $c->{mode}, $c->{reading}, $what, $i + 1,
        $self->conn_cursor_desc($c->{conns}[$i]));
}

sub conn_cursor_desc {
    my ($self, $conn) = @_;
    my $cur = cursor_of($conn);
    my $sent = $conn->{header_cursor} // $conn->{arg_cursor} // $conn->{cursor_sent};
    return 'request ' . $self->rel($conn->{t_req}) . ', ' . (defined $cur ? "cursor $cur" : defined $sent ? "malformed cursor '$sent'" : 'no cursor');
}

# ---------------------------------------------------------------- publishing

# A message of many pages needs as many contiguous free pages; channel records left between
# free pages can, rarely, leave no run that long even after every message was evicted, and
# the publish is refused (README "No room"). Excused only for a message over 1/16 of a zone
# that evicts, and only with that answer.
sub refused_for_fragmentation {
    my ($self, $m) = @_;
    my $tr = $self->{tr};
    return 0 unless ($m->{status} // 0) == 507 && $tr->{evicts} && $tr->{zone_bytes};
    return 0 unless ($m->{answer} // '') eq "message too large for zone\n";
    return length($m->{data} // '') > $tr->{zone_bytes} / 16;
}

sub check_publishes {
    my $self = shift;
    my $tr = $self->{tr};
    my %seen;
    for my $m (@{ $tr->{publishes} }) {
        my $where = 'publish ' . ($m->{label} // '?') . ' to ' . $self->chname($m->{channel});
        if (!$m->{status}) {
            my $near = $self->kill_or_reload_near($m->{t_send}, $m->{t_end} // $tr->{t_end});
            next if $near && $near =~ /^kill/;
            $self->diverge('P1', 'pub', $where, 'no answer (' . ($m->{end} // 'none') . ')'
                           . ($near ? ", though only a $near happened (a reload finishes requests)" : ''));
            next;
        }
        next if $self->refused_for_fragmentation($m);
        if ($m->{status} != 201 || !$m->{json}) {
            $self->diverge('P1', 'pub', $where, "answered $m->{status}, not 201 with JSON: " . substr($m->{answer} // '', 0, 200));
            next;
        }
        my $j = $m->{json};
        $self->diverge('P1', 'pub', $where, "201 without a valid id: " . ($j->{id} // 'null')) unless valid_id($j->{id});
        $self->diverge('P1', 'pub', $where, "201 names channel " . ($j->{channel} // 'null')) if ($j->{channel} // '') ne $m->{channel};
        my $n = $j->{messages} // -1;
        $self->diverge('P1', 'pub', $where, "201 says messages=$n (1..$tr->{history} expected)") if $n < 1 || $n > $tr->{history};
        next unless $m->{acked};
        $self->diverge('P2', 'ids', $where, "id $m->{id} handed out twice (also $seen{ $m->{id} })") if $seen{ $m->{id} };
        $seen{ $m->{id} } = $m->{label};
        if ($tr->{min_id} && !id_gt($m->{id}, $tr->{min_id})) {
            $self->diverge('P2', 'ids', $where, "id $m->{id} is not above $tr->{min_id}, handed out before this schedule");
        }
    }
    # ids increase in the order publishes complete: one answered before another was sent
    my @acked = sort { $a->{t_ack} <=> $b->{t_ack} } grep { $_->{acked} } @{ $tr->{publishes} };
    my ($max);
    for my $m (sort { $a->{t_send} <=> $b->{t_send} } grep { $_->{acked} } @{ $tr->{publishes} }) {
        # the newest id of publishes answered before this one was sent
        while (@acked && $acked[0]{t_ack} < $m->{t_send}) {
            my $a = shift @acked;
            $max = $a if !$max || $a->{key} gt $max->{key};
        }
        if ($max && $m->{key} le $max->{key}) {
            $self->diverge('P2', 'ids', "publish $m->{label}", "id $m->{id} is not above $max->{id} of $max->{label}, answered before it was sent");
        }
    }
}

sub check_deletes {
    my $self = shift;
    my $tr = $self->{tr};
    for my $d (@{ $tr->{deletes} }) {
        my $where = 'DELETE of ' . $self->chname($d->{channel}) . ' at ' . $self->rel($d->{t_send});
        my $st = $d->{status} // 0;
        if ($st == 200) {
            $self->diverge('D1', 'pub', $where, '200 without the channel JSON') unless ref $d->{json} eq 'HASH' && ($d->{json}{channel} // '') eq $d->{channel};
            next;
        }
        if ($st == 404) {
            next if $tr->{evicts} || $tr->{ttl_ms} < 60_000;   # its messages may all be gone: the channel with them
            # a message acknowledged after the previous DELETE of the channel: it exists
            my ($prev) = sort { $b->{t_ack} <=> $a->{t_ack} }
                         grep { $_ != $d && $_->{channel} eq $d->{channel} && ($_->{status} // 0) == 200 && $_->{t_ack} < $d->{t_send} } @{ $tr->{deletes} };
            my $since = $prev ? $prev->{t_ack} : 0;
            my ($m) = grep { $_->{acked} && $_->{channel} eq $d->{channel} && $_->{t_send} > $since && $_->{t_ack} < $d->{t_send} } @{ $tr->{publishes} };
            $self->diverge('D1', 'pub', $where, "404 though $m->{label} ($m->{id}) was published to it since") if $m;
            next;
        }
        next if !$st && $self->kill_or_reload_near($d->{t_send}, $d->{t_ack} // $tr->{t_end});
        $self->diverge('D1', 'pub', $where, "answered $st (" . ($d->{end} // '') . ')');
    }
}

# ---------------------------------------------------------------- SSE

# The message an event names: by id, or (a publish that got no answer) by its label.
sub identify {
    my ($self, $id, $data) = @_;
    return $self->{by_id}{$id} if defined $id && $self->{by_id}{$id};
    my ($label) = ($data // '') =~ /^([^:]*):/;
    my $m = defined $label ? $self->{by_label}{$label} : undef;
    return $m && $m->{maybe} ? $m : undef;
}

sub check_sse_client {
    my ($self, $c) = @_;
    for my $i (0 .. $#{ $c->{conns} }) {
        $self->check_sse_conn($c, $i);
    }
}

# The start of a connection without a cursor, first_message newest: the zone's position
# when it attached (see THE MODEL).
sub newest_start {
    my ($self, $chans, $t_req, $t_head, $first_key) = @_;
    my $p;
    for my $m (@{ $self->{acked} }) {
        $p = $m if $m->{t_ack} < $t_req && (!$p || $m->{key} gt $p->{key});
    }
    my %mine = map { $_ => 1 } @$chans;
    for my $m (@{ $self->{acked} }) {
        next unless $mine{ $m->{channel} } && $m->{t_ack} >= $t_req && $m->{t_send} <= $t_head;
        next if defined $first_key && $m->{key} ge $first_key;
        $p = $m if !$p || $m->{key} gt $p->{key};
    }
    return $p ? $p->{id} : undef;
}

# -3: the id below the window of $ch, i.e. of its 4th newest message sent before $t_head.
sub window_start {
    my ($self, $ch, $n, $t_head) = @_;
    my @before = grep { $_->{acked} && $_->{t_send} <= $t_head } @{ $self->{by_channel}{$ch} || [] };
    return @before > $n ? $before[ -$n - 1 ]{id} : undef;
}

# Why message $m could not be received by a connection that asked at $t_req (undef: it could).
sub impossible {
    my ($self, $m, $t_req, $cursor, $mode) = @_;
    my $tr = $self->{tr};
    for my $d (@{ $tr->{deletes} }) {
        next unless $d->{channel} eq $m->{channel} && ($d->{status} // 0) == 200;
        return "its channel was deleted at " . $self->rel($d->{t_send}) . ' before the request'
            if $d->{t_ack} < $t_req && ($m->{t_ack} // inf()) < $d->{t_send};
    }
    return undef unless $m->{acked};
    my $newer = grep { $_->{acked} && $_->{key} gt $m->{key} && $_->{t_ack} < $t_req } @{ $self->{by_channel}{ $m->{channel} } };
    return "$newer newer messages of its channel were published before the request (history $tr->{history})"
        if $newer >= $tr->{history};
    return 'it had expired (ttl) before the request' if id_ms($m->{id}) + $tr->{ttl_ms} + 1000 < $t_req * 1000;
    if (!defined $cursor) {
        return 'it was published before the request (first_message newest)' if $mode eq 'new' && $m->{t_ack} < $t_req;
        return "$newer newer messages of its channel were published before the request (first_message -3)"
            if $mode eq 'last3' && $newer >= 3;
    }
    return undef;
}

sub check_sse_conn {
    my ($self, $c, $i) = @_;
    my $tr = $self->{tr};
    my $conn = $c->{conns}[$i];
    my $where = $self->client_desc($c, $i, 'stream');
    my @chans = @{ $conn->{channels} };
    my %mine = map { $_ => 1 } @chans;
    my $multi = @chans > 1;
    my $cursor = cursor_of($conn);
    my $end_t = $conn->{t_end} // $tr->{t_end};

    # the answer (README "SSE": 200, text/event-stream)
    if (!$conn->{status}) {
        return if ($conn->{end} // '') eq 'closed';
        return if $self->kill_or_reload_near($conn->{t_req}, $end_t);
        $self->diverge('S0', 'sse', $where, 'no response (' . ($conn->{end} // 'open') . ')');
        return;
    }
    if ($conn->{status} != 200) {
        $self->diverge('S0', 'sse', $where, "answered $conn->{status}: " . substr($conn->{body} // '', 0, 200));
        return;
    }
    my $ct = $conn->{headers}{'content-type'} // '';
    $self->diverge('S0', 'sse', $where, "Content-Type '$ct'") unless $ct =~ m{^text/event-stream};

    # walk the events in order
    my $pos = $cursor;                 # the last id the stream gave (or its cursor)
    my (%got, %left, @gaps, @listing, $first_key, %first_of);
    my @evs = @{ $conn->{events} };
    my @ids;                            # [key, t] of id-bearing events, in order
    for my $k (0 .. $#evs) {
        my $e = $evs[$k];
        my $type = $e->{event} // '';
        if ($type eq 'channel-gap') {
            my $j = eval { $JSON->decode($e->{data} // '') };
            if (ref $j ne 'HASH' || !$mine{ $j->{channel} // '' } || defined $e->{id}) {
                $self->diverge('S1', 'sse', $where, 'malformed channel-gap: ' . ($e->{data} // ''));
                next;
            }
            my $lei = $j->{last_event_id};
            if (defined $pos ? (($lei // '') ne $pos) : defined $lei && $lei ne '0-0') {
                $self->diverge('S6', 'sse', $where, "channel-gap says last_event_id " . ($lei // 'null')
                               . ', the client\'s cursor is ' . ($pos // 'none'));
            }
            if (defined $j->{oldest_event_id} && !valid_id($j->{oldest_event_id})) {
                $self->diverge('S6', 'sse', $where, "channel-gap with a bad oldest_event_id '$j->{oldest_event_id}'");
            }
            push @gaps, { ch => $j->{channel}, t => $e->{t}, after => valid_id($lei) && $lei ne '0-0' ? $lei : $pos, k => $k, n => scalar @ids,
                          oldest => valid_id($j->{oldest_event_id}) ? $j->{oldest_event_id} : undef };
            next;
        }
        if (!defined $e->{id}) {
            next if defined $e->{retry} && !defined $e->{data};
            $self->diverge('S1', 'sse', $where, "an event without id: event '$type', data '" . substr($e->{data} // '', 0, 80) . "'");
            next;
        }
        if (!valid_id($e->{id})) {
            $self->diverge('S1', 'sse', $where, "id '$e->{id}' is not of the form ms-counter");
            next;
        }
        my $key = key($e->{id});
        if (defined $pos && $key le key($pos)) {
            $self->diverge('S2', 'sse', $where, "id $e->{id} (" . ($type || 'message') . ") came after $pos: ids must strictly increase",
                           $self->sse_listing($conn, $k));
        }
        push @ids, [ $key, $e->{t} ];
        $pos = $e->{id} if !defined $pos || $key gt key($pos);
        if ($type eq 'channel-deleted') {
            my $j = eval { $JSON->decode($e->{data} // '') };
            my $ch = ref $j eq 'HASH' ? $j->{channel} // '' : '';
            if (!$mine{$ch}) {
                $self->diverge('S1', 'sse', $where, "malformed channel-deleted: " . ($e->{data} // ''));
                next;
            }
            my ($d) = grep { $_->{channel} eq $ch && $_->{t_send} < $e->{t} } @{ $tr->{deletes} };
            $self->diverge('S7', 'pub', $where, "channel-deleted for " . $self->chname($ch) . " without a DELETE") unless $d;
            $left{$ch} = { id => $e->{id}, key => $key, t => $e->{t}, k => $k };
            next;
        }
        my $m = $self->identify($e->{id}, $e->{data});
        if (!$m) {
            $self->diverge('S3', 'sse', $where, "received $e->{id}, which was never published", $self->sse_listing($conn, $k));
            next;
        }
        $got{ $m->{id} // $e->{id} } = 1;
        $first_key //= $key;
        $first_of{ $m->{channel} } //= $key;
        my $what = "received " . $self->mdesc($m);
        if (!$mine{ $m->{channel} }) { $self->diverge('S3', 'sse', $where, "$what: not a channel of the stream"); next }
        if ($left{ $m->{channel} }) { $self->diverge('S3', 'pub', $where, "$what after its channel-deleted"); next }
        if (defined $m->{id} && $m->{id} ne $e->{id}) { $self->diverge('S3', 'sse', $where, "$what under id $e->{id}") }
        my $want_event = defined $m->{event} ? $m->{event} : $multi ? $m->{channel} : undef;
        if (($e->{event} // "\0") ne ($want_event // "\0")) {
            $self->diverge('S3', 'sse', $where, "$what with event '" . ($e->{event} // '(none)') . "', expected '" . ($want_event // '(none)') . "'");
        }
        if (!defined $e->{data} || $e->{data} ne ChannelsTest::SseParser::client_data($m->{data})) {
            $self->diverge('S3', 'sse', $where, "$what with other data: " . (defined $e->{data} ? length($e->{data}) . ' B' : 'no data line')
                           . ', expected ' . length(ChannelsTest::SseParser::client_data($m->{data})) . ' B');
        }
        if (my $why = $self->impossible($m, $conn->{t_req}, $cursor, $c->{mode})) {
            $self->diverge('S4', 'sse', $where, "$what, which it could not have had: $why");
        }
    }
    return unless defined $pos;
    my $high = key($pos);

    # completeness: each message of its channels after its start and below the newest id it
    # received came, or was lost and announced before the stream moved past it
    my $t_head = $conn->{t_head} // $conn->{t_req};
    my $start_new = !defined $cursor && $c->{mode} eq 'new'
        ? $self->newest_start(\@chans, $conn->{t_req}, $t_head, $first_key) : undef;
    my %missing;
    for my $ch (@chans) {
        my $start = defined $cursor ? $cursor : $c->{mode} eq 'new' ? $start_new
                  : $c->{mode} eq 'last3' ? $self->window_start($ch, 3, $t_head) : undef;
        my $limit = $left{$ch} ? $left{$ch}{key} : $high;
        for my $m (@{ $self->{by_channel}{$ch} || [] }) {
            next unless $m->{acked} && !$got{ $m->{id} };
            next if defined $start && $m->{key} le key($start);
            next if $m->{key} ge $limit;
            # when the stream moved past it
            my ($passed) = grep { $_->[0] gt $m->{key} } @ids;
            my $t = $passed ? $passed->[1] : $end_t;
            my $n_before = grep { $_->[0] lt $m->{key} } @ids;
            my $lost = $self->maybe_lost($m, $t);
            my $pre = !defined $cursor && $c->{mode} ne 'new' && (!$first_of{$ch} || $m->{key} lt $first_of{$ch})
                      && $self->maybe_lost($m, $t_head);
            next if $pre;
            if (!$lost) {
                $missing{ $m->{id} } = 'missing: retained (not lost)';
                next;
            }
            my $told = grep { $_->{ch} eq $ch && $_->{n} <= $n_before + ($passed ? 0 : 1e9) } @gaps;
            $told ||= $lost eq 'deleted' && $left{$ch};
            $missing{ $m->{id} } = "missing: lost ($lost) without channel-gap before the stream moved past it" unless $told;
        }
    }
    if (%missing) {
        my @ids_m = sort { key($a) cmp key($b) } keys %missing;
        my %why = map { $_ => 1 } values %missing;
        $self->diverge('S5', 'sse', $where, scalar(@ids_m) . ' message(s) of its channels never received: ' . join('; ', sort keys %why),
                       $self->sse_diff($conn, \%missing, $cursor));
    }
    # each channel-gap announces a real loss
    for my $g (@gaps) {
        my $real = grep { ($_->{acked} || $_->{maybe}) && $_->{t_send} < $g->{t} && !$got{ $_->{id} // '' }
                          && (!defined $g->{after} || !$_->{acked} || $_->{key} gt key($g->{after})) } @{ $self->{by_channel}{ $g->{ch} } || [] };
        next if $real || $self->floor_above($g->{after}, $g->{t});
        # or a deletion marker of its channel after the stream's position, freed before it
        # was read (its id's ms are the DELETE's)
        next if grep { $_->{channel} eq $g->{ch} && ($_->{status} // 0) == 200 && $_->{t_send} < $g->{t}
                       && (!defined $g->{after} || id_ms($g->{after}) <= ($_->{t_ack} // inf()) * 1000 + 2)
                       && $self->marker_maybe_gone($_, $g->{t}) } @{ $tr->{deletes} };
        $self->diverge('S6', 'sse', $where, 'channel-gap for ' . $self->chname($g->{ch}) . ' at ' . $self->rel($g->{t})
                       . ' though nothing of it after ' . ($g->{after} // 'the start') . ' was lost', $self->sse_listing($conn, $g->{k}));
    }
    # a DELETE during the stream: channel-deleted before anything published after the DELETE
    for my $d (@{ $tr->{deletes} }) {
        next unless ($d->{status} // 0) == 200 && $mine{ $d->{channel} } && $d->{t_send} > $t_head;
        next if $left{ $d->{channel} } && $left{ $d->{channel} }{t} <= $end_t;
        # a cursor of the future, past the marker's id: the stream starts after the deletion.
        # The marker's id, when another stream was told it; else its ms are taken for the
        # DELETE's time (but nginx's cached time may be older than the request by as long as
        # a turn of its event loop took: under load, 100 ms and more)
        my $marker = $self->marker_id($d);
        if (defined $marker) {
            next if defined $cursor && key($cursor) ge $marker;
        } else {
            next if defined $cursor && id_ms($cursor) > $d->{t_ack} * 1000 + 2
                 && !grep { $_->{t_ack} < $d->{t_send} && $_->{key} ge key($cursor) } @{ $self->{acked} };
        }
        my ($k_after) = grep { defined $evs[$_]{id} && $self->{by_id}{ $evs[$_]{id} } && $self->{by_id}{ $evs[$_]{id} }{t_send} > $d->{t_ack} } 0 .. $#evs;
        next unless defined $k_after;
        my $after = $evs[$k_after];
        next if $self->marker_gap_told($d, \@gaps, $k_after, key($after->{id}));
        $self->diverge('S7', 'pub', $where, 'no channel-deleted for ' . $self->chname($d->{channel}) . ' (DELETE at '
                       . $self->rel($d->{t_send}) . "), yet the stream went on to $after->{id}");
    }
    # how the stream ended
    my $end = $conn->{end} // '';
    if ($end eq 'clean' || $end eq 'eof') {
        my $all_left = !grep { !$left{$_} } @chans;
        my $stalled = @{ $conn->{paused} || [] } || $conn->{slow};
        my $near = $self->kill_or_reload_near($conn->{t_req}, $end_t);
        if (!$all_left && !$stalled && !$near) {
            $self->diverge('S8', 'sse', $where, "the server ended the stream ($end) at " . $self->rel($end_t)
                           . ' with channels left, no reload, no kill, a client that reads');
        }
    }
}

# Whether the stream was told of the loss of DELETE $d's marker instead of channel-deleted
# (README "Publishing": the marker lives as long as a message would, and one freed before
# the stream had it is a loss told as channel-gap, like a message's): a channel-gap of that
# channel, after the DELETE was sent and before event $k_after (the first published after
# the DELETE was acknowledged, id key $hi), whose range covers the marker, at a time the
# marker may be gone. The marker's id is not in the trace; it lies above $lo (every id
# acknowledged before the DELETE was sent) and below $hi. The gap covers it when the
# stream's position it names is below $hi (at or below $lo for certain; between, a publish
# in flight with the DELETE, either order) and the oldest id it says is retained, if any,
# is above $lo (at or below $lo, the marker would be retained, and must be told).
sub marker_gap_told {
    my ($self, $d, $gaps, $k_after, $hi) = @_;
    my $tr = $self->{tr};
    my $lo = $self->marker_floor($d);
    if (defined(my $marker = $self->marker_id($d))) {   # known exactly: no in-between
        $hi = $marker;
        $lo = $marker;
    }
    for my $g (@$gaps) {
        next unless $g->{ch} eq $d->{channel} && $g->{k} < $k_after && $g->{t} > $d->{t_send};
        next if defined $g->{after} && key($g->{after}) ge $hi;
        next if defined $g->{oldest} && key($g->{oldest}) le $lo;
        return 1 if $self->marker_maybe_gone($d, $g->{t});
    }
    return 0;
}

# The key of the newest id acknowledged before DELETE $d was sent: its marker's id is above.
sub marker_floor {
    my ($self, $d) = @_;
    my $lo = '';
    for my $m (@{ $self->{acked} }) { $lo = $m->{key} if $m->{t_ack} < $d->{t_send} && $m->{key} gt $lo }
    return $lo;
}

# The key of DELETE $d's marker when some SSE stream of the trace was told it (undef when
# none was, or when another DELETE of the channel overlaps it and the two cannot be told
# apart): a channel-deleted of its channel, received after the DELETE was sent, whose id is
# above every id acknowledged before it was sent and below every id sent after its answer.
sub marker_id {
    my ($self, $d) = @_;
    return $self->{marker_key}{$d} if exists $self->{marker_key}{$d};
    my $tr = $self->{tr};
    my $lo = $self->marker_floor($d);
    my $hi = '9';
    for my $m (@{ $self->{acked} }) { $hi = $m->{key} if $m->{t_send} > ($d->{t_ack} // inf()) && $m->{key} lt $hi }
    my $overlap = grep { $_ != $d && $_->{channel} eq $d->{channel} && $_->{t_send} < ($d->{t_ack} // inf())
                         && ($_->{t_ack} // inf()) > $d->{t_send} } @{ $tr->{deletes} };
    my %keys;
    unless ($overlap || ($d->{status} // 0) != 200) {
        for my $c (grep { $_->{kind} eq 'sse' } @{ $tr->{clients} }) {
            for my $conn (@{ $c->{conns} }) {
                for my $e (@{ $conn->{events} || [] }) {
                    next unless ($e->{event} // '') eq 'channel-deleted' && valid_id($e->{id}) && $e->{t} > $d->{t_send};
                    my $j = eval { $JSON->decode($e->{data} // '') };
                    next unless ref $j eq 'HASH' && ($j->{channel} // '') eq $d->{channel};
                    my $k = key($e->{id});
                    $keys{$k} = 1 if $k gt $lo && $k lt $hi;
                }
            }
        }
    }
    # two different ids for one marker: the judge knows nothing (S2/S7 elsewhere say why)
    return $self->{marker_key}{$d} = keys %keys == 1 ? (keys %keys)[0] : undef;
}

# Whether DELETE $d's marker may be gone by time $t: expired (ttl), evicted (the zone evicts
# and something was published or deleted after it), trimmed (its channel's ring holds
# more than `history` messages published after it), or dropped with the zone's rebuild
# after a worker was killed in the middle of an update.
sub marker_maybe_gone {
    my ($self, $d, $t) = @_;
    my $tr = $self->{tr};
    my $marker = $self->marker_id($d);   # its ms, when known, are its stamp (see S7 below)
    my $born_ms = defined $marker ? ($marker =~ /^0*(\d+?)\d{10}$/)[0] : $d->{t_send} * 1000;
    return 1 if $t * 1000 + 100 >= $born_ms + $tr->{ttl_ms};
    my $later = sub { $_[0] != $d && $_[0]{t_send} < $t && ($_[0]{t_end} // $_[0]{t_ack} // inf()) > $d->{t_send} };
    my @pubs = grep { $later->($_) } @{ $tr->{publishes} };
    return 1 if $tr->{evicts} && (@pubs || grep { $later->($_) } @{ $tr->{deletes} });
    return 1 if grep({ $_->{channel} eq $d->{channel} } @pubs) > $tr->{history};
    return 1 if grep { $_->{torn} && $_->{t} < $t && $d->{t_send} < $_->{t} + 0.05 } @{ $tr->{kills} };
    return 0;
}

# A few lines of the stream around event $k.
sub sse_listing {
    my ($self, $conn, $k) = @_;
    my @evs = @{ $conn->{events} };
    my $from = $k > 6 ? $k - 6 : 0;
    my $to = $k + 3 > $#evs ? $#evs : $k + 3;
    return ('events ' . ($from + 1) . '..' . ($to + 1) . ' of ' . scalar(@evs) . ':',
            map { ($_ == $k ? '=> ' : '   ') . $self->ev_desc($evs[$_]) } $from .. $to);
}

sub ev_desc {
    my ($self, $e) = @_;
    my $type = $e->{event} // '';
    return "channel-gap $e->{data} (" . $self->rel($e->{t}) . ')' if $type eq 'channel-gap';
    return "$e->{id} channel-deleted $e->{data} (" . $self->rel($e->{t}) . ')' if $type eq 'channel-deleted';
    my $m = $self->identify($e->{id}, $e->{data});
    return ($e->{id} // '(no id)') . ' ' . ($m ? $self->chname($m->{channel}) . " $m->{label}" : '(unknown)')
         . ($type ne '' ? " event '$type'" : '') . ' (' . $self->rel($e->{t}) . ')';
}

# The stream against what it should have had: "=" received, "-" missing (why), "!" a gap.
sub sse_diff {
    my ($self, $conn, $missing, $cursor) = @_;
    my @rows;
    for my $e (@{ $conn->{events} }) {
        my $type = $e->{event} // '';
        my $k = defined $e->{id} && valid_id($e->{id}) ? key($e->{id}) : undef;
        push @rows, [ $k, ($type eq 'channel-gap' ? '! ' : '= ') . $self->ev_desc($e) ];
    }
    for my $id (keys %$missing) {
        push @rows, [ key($id), '- ' . $self->mdesc($self->{by_id}{$id}) . "  <- $missing->{$id}" ];
    }
    # keep the stream's own order; missing ones go before the first received id above them
    my @out;
    my @miss = sort { $a->[0] cmp $b->[0] } grep { $_->[1] =~ /^- / } @rows;
    for my $r (grep { $_->[1] !~ /^- / } @rows) {
        while (@miss && defined $r->[0] && $miss[0][0] lt $r->[0]) { push @out, (shift @miss)->[1] }
        push @out, $r->[1];
    }
    push @out, map { $_->[1] } @miss;
    unshift @out, 'start: ' . ($cursor // 'no cursor') . '; = received, - expected but not received, ! channel-gap';
    return @out > 40 ? (@out[0 .. 19], '   ...', @out[-20 .. -1]) : @out;
}

# ---------------------------------------------------------------- long-poll

sub check_poll_client {
    my ($self, $c) = @_;
    my $tr = $self->{tr};
    my @conns = @{ $c->{conns} };
    my ($chain_first, %chain_got);
    for my $i (0 .. $#conns) {
        my $p = $conns[$i];
        if ($p->{chain_start}) { $chain_first = $i; %chain_got = () }
        next if ($p->{end} // '') eq 'closed';
        my $where = $self->client_desc($c, $i, 'request');
        my $st = $p->{status} // 0;
        my $h = $p->{headers} || {};
        if (!$st) {
            next if $self->kill_or_reload_near($p->{t_req}, $p->{t_end} // $tr->{t_end});
            $self->diverge('L0', 'poll', $where, 'no answer (' . ($p->{end} // 'open') . ')');
            next;
        }
        if (($p->{end} // 'clean') ne 'clean') {
            # an answer cut off: only a killed worker (or a reload's end) may do that
            next if $self->kill_or_reload_near($p->{t_req}, $p->{t_end} // $tr->{t_end});
            $self->diverge('L0', 'poll', $where, "answered $st, then cut off ($p->{end})");
            next;
        }
        if ($st != 200 && $st != 204 && $st != 410) {
            $self->diverge('L0', 'poll', $where, "answered $st: " . substr($p->{body} // '', 0, 200));
            next;
        }
        $self->diverge('L0', 'poll', $where, "answered $st without Cache-Control: no-cache")
            unless ($h->{'cache-control'} // '') =~ /no-cache/;
        my $next = $h->{'last-event-id'};
        if (!valid_id($next)) {
            $self->diverge('L0', 'poll', $where, "answered $st without a valid Last-Event-ID: " . ($next // 'none'));
            next;
        }
        my $cursor = cursor_of($p);
        my @chans = @{ $p->{channels} };
        my %mine = map { $_ => 1 } @chans;
        if ($st == 410) {
            # A deletion while it waited, or (a cursor) after its cursor: a deleted channel keeps
            # its marker, and a client coming back from before it is told (README "Long polling").
            my $since = $p->{t_req} - 0.01;
            if (defined $cursor) {
                my $m = $self->{by_id}{$cursor};
                $since = $m ? $m->{t_send} : -inf();
            }
            my ($d) = grep { $mine{ $_->{channel} } && $_->{t_send} < $p->{t_end} && ($_->{t_ack} // inf()) > $since } @{ $tr->{deletes} };
            $self->diverge('L3', 'poll', $where, '410 though no channel of it was deleted after its cursor or while it waited') unless $d;
            next;
        }
        if ($st == 204) {
            if (defined $cursor) {
                $self->diverge('L2', 'poll', $where, "204 with Last-Event-ID $next, not the unchanged cursor $cursor") if $next ne $cursor;
            } else {
                my ($newest) = sort { $b->{key} cmp $a->{key} } grep { $mine{ $_->{channel} } && $_->{t_ack} < $p->{t_req} } @{ $self->{acked} };
                $self->diverge('L2', 'poll', $where, "204 (no cursor sent) with Last-Event-ID $next, below $newest->{id} published before the request")
                    if $newest && !id_gt($next, $newest->{id}) && $next ne $newest->{id};
            }
            # a 204 while a message after the cursor was retained (published well before)
            # (a worker shutting down for a reload answers 204 at once)
            my $mode_start = defined $cursor ? $cursor : undef;
            if (defined $mode_start && !$self->kill_or_reload_near($p->{t_req}, $p->{t_end})) {
                for my $m (grep { $mine{ $_->{channel} } && $_->{key} gt key($mode_start) && $_->{t_ack} < $p->{t_end} - 1 } @{ $self->{acked} }) {
                    next if $self->maybe_lost($m, $p->{t_end});
                    $self->diverge('L2', 'poll', $where, '204 though ' . $self->mdesc($m) . ' was there after its cursor');
                    last;
                }
            }
            next;
        }
        # 200: the messages
        my (@items, $gap);
        if ($p->{format} eq 'raw') {
            my $m = $self->identify($next, $p->{body});
            if (!$m) { $self->diverge('L1', 'poll', $where, "raw answer for $next, which was never published"); next }
            my $ct = $h->{'content-type'} // '';
            $self->diverge('L1', 'poll', $where, 'raw answer ' . $self->mdesc($m) . " with Content-Type '$ct'")
                if $ct ne ($m->{ctype} // 'text/plain');
            $self->diverge('L1', 'poll', $where, 'raw answer ' . $self->mdesc($m) . ' with Event-Type ' . ($h->{'event-type'} // '(none)'))
                if ($h->{'event-type'} // "\0") ne ($m->{event} // "\0");
            $self->diverge('L1', 'poll', $where, 'raw answer ' . $self->mdesc($m) . ' with other data (' . length($p->{body} // '') . ' B)')
                if ($p->{body} // '') ne $m->{data};
            @items = ({ id => $next, m => $m });
        } else {
            my $j = $p->{json};
            if (ref $j ne 'HASH' || ref $j->{messages} ne 'ARRAY' || !@{ $j->{messages} }) {
                $self->diverge('L1', 'poll', $where, '200 without messages: ' . substr($p->{body} // '', 0, 200));
                next;
            }
            $gap = $j->{gap} ? 1 : 0;
            my $n = @{ $j->{messages} };
            $self->diverge('L1', 'poll', $where, "$n messages in one answer (at most 100)") if $n > 100;
            my $bytes = 0;
            for my $jm (@{ $j->{messages} }) {
                my $data = $jm->{data} // '';
                if (($jm->{encoding} // '') eq 'base64') { $data = MIME::Base64::decode_base64($data) }
                else { utf8::encode($data) }
                $bytes += length $data;
                my $m = $self->identify($jm->{id}, $data);
                if (!$m) { $self->diverge('L1', 'poll', $where, "answered $jm->{id}, which was never published"); next }
                my $what = 'answered ' . $self->mdesc($m);
                $self->diverge('L1', 'poll', $where, "$what with other data") if $data ne $m->{data};
                my $b64 = ($jm->{encoding} // '') eq 'base64';
                my $valid = eval { Encode::decode('UTF-8', my $copy = $m->{data}, Encode::FB_CROAK()); 1 } ? 1 : 0;
                $self->diverge('L1', 'poll', $where, "$what " . ($b64 ? 'base64-encoded, though valid UTF-8' : 'not base64-encoded, though not UTF-8'))
                    if $b64 == $valid;
                $self->diverge('L1', 'poll', $where, "$what on channel '" . ($jm->{channel} // '') . "'") if ($jm->{channel} // '') ne $m->{channel};
                $self->diverge('L1', 'poll', $where, "$what with event '" . ($jm->{event} // '(none)') . "'") if ($jm->{event} // "\0") ne ($m->{event} // "\0");
                $self->diverge('L1', 'poll', $where, "$what with content_type '" . ($jm->{content_type} // '') . "'")
                    if ($jm->{content_type} // '') ne ($m->{ctype} // 'text/plain');
                push @items, { id => $jm->{id}, m => $m };
            }
            $self->diverge('L1', 'poll', $where, "$n messages of $bytes B in one answer (at most 1 MiB unless one)") if $n > 1 && $bytes > 1048576;
            $self->diverge('L1', 'poll', $where, "last_event_id " . ($j->{last_event_id} // 'null') . " is not the Last-Event-ID header $next")
                if ($j->{last_event_id} // '') ne $next;
            $self->diverge('L1', 'poll', $where, "Last-Event-ID $next is not the last message's id")
                if @items && $items[-1]{id} ne $next;
        }
        # order, channels, what it could not have had
        my $pos = $cursor;
        for my $it (@items) {
            my $m = $it->{m};
            if (!valid_id($it->{id}) || (defined $pos && !id_gt($it->{id}, $pos))) {
                $self->diverge('L1', 'poll', $where, "$it->{id} after " . ($pos // '?') . ': ids must strictly increase and follow the cursor');
            }
            $pos = $it->{id} if valid_id($it->{id});
            $self->diverge('L1', 'poll', $where, 'answered ' . $self->mdesc($m) . ': not a channel of the request') unless $mine{ $m->{channel} };
            my $first_of_chain = !defined $cursor && $i == $chain_first;
            if (my $why = $self->impossible($m, $p->{t_req}, $first_of_chain ? undef : ($cursor // '0-0'), $c->{mode})) {
                $self->diverge('L1', 'poll', $where, 'answered ' . $self->mdesc($m) . ", which it could not have had: $why");
            }
            $chain_got{ $it->{id} } = 1;
        }
        next unless @items && valid_id($items[-1]{id});
        # completeness within the answer: between its start and its last message
        my %in = map { $_->{id} => 1 } @items;
        my $last = key($items[-1]{id});
        my $first_key = key($items[0]{id});
        my %missing;
        for my $ch (@chans) {
            my $start = defined $cursor ? $cursor
                      : $c->{mode} eq 'new' ? $self->newest_start(\@chans, $p->{t_req}, $p->{t_end}, $first_key)
                      : $c->{mode} eq 'last3' ? $self->window_start($ch, 3, $p->{t_end}) : undef;
            for my $m (@{ $self->{by_channel}{$ch} || [] }) {
                next unless $m->{acked} && !$in{ $m->{id} } && $m->{key} lt $last;
                next if defined $start && $m->{key} le key($start);
                my $lost = $self->maybe_lost($m, $p->{t_end});
                if (!$lost) { $missing{ $m->{id} } = 'retained (not lost)'; next }
                next if !defined $cursor;                       # gone before it attached: no notice
                next if $p->{format} eq 'raw';                  # raw cannot say "gap"
                $missing{ $m->{id} } = "lost ($lost) without \"gap\":true" unless $gap;
            }
        }
        if (%missing) {
            $self->diverge('L2', 'poll', $where, scalar(keys %missing) . ' message(s) missing from the answer',
                map { '- ' . $self->mdesc($self->{by_id}{$_}) . "  <- $missing{$_}" } sort { key($a) cmp key($b) } keys %missing);
        }
        if ($gap) {
            my %later;   # what this client received from this answer on
            for my $q (@conns[ $i .. $#conns ]) {
                next if ($q->{end} // 'clean') ne 'clean';   # cut off: nothing of it received
                $later{ $_->{id} } = 1 for @{ ($q->{json} || {})->{messages} || [] };
                $later{ $q->{headers}{'last-event-id'} } = 1 if ($q->{status} // 0) == 200 && $q->{headers};
            }
            my $real = grep { $mine{ $_->{channel} } && ($_->{acked} || $_->{maybe}) && $_->{t_send} < $p->{t_end}
                              && !$later{ $_->{id} // '' } && (!defined $cursor || !$_->{acked} || id_gt($_->{id}, $cursor)) } @{ $tr->{publishes} };
            $self->diverge('L3', 'poll', $where, '"gap":true though nothing of its channels after ' . ($cursor // 'the start') . ' was lost')
                unless $real || $self->floor_above($cursor, $p->{t_end});
        }
    }
}

# ---------------------------------------------------------------- liveness

sub check_liveness {
    my $self = shift;
    my $tr = $self->{tr};
    for my $b (@{ $tr->{barriers} }) {
        next if $b->{ok};
        for my $l (@{ $b->{lacking} }) {
            my ($c) = grep { $_->{n} == $l->{client} } @{ $tr->{clients} };
            my $where = $self->client_desc($c, $#{ $c->{conns} }, $c->{kind} eq 'sse' ? 'stream' : 'request');
            if ($l->{ids}) {
                $self->diverge('V1', 'sse', $where, 'at the ' . ($b->{final} ? 'final ' : '') . 'barrier of ' . $self->rel($b->{t})
                    . ', reading at full speed, still without (5 s later, nothing published meanwhile):',
                    map { '- ' . $self->mdesc($self->{by_id}{$_}) } @{ $l->{ids} }[0 .. ($#{ $l->{ids} } < 9 ? $#{ $l->{ids} } : 9)]);
            } else {
                $self->diverge('V1', 'sse', $where, 'at the barrier of ' . $self->rel($b->{t}) . ": $l->{why} for 5 s");
            }
        }
    }
    my $d = $tr->{drain};
    if ($d && !$d->{ok}) {
        for my $l (@{ $d->{lacking} }) {
            my ($c) = grep { $_->{n} == $l->{client} } @{ $tr->{clients} };
            $self->diverge('V2', 'sse', $self->client_desc($c, $#{ $c->{conns} }, $c->{kind} eq 'sse' ? 'stream' : 'request'),
                           "the END messages did not all arrive within 15 s ($l->{why})");
        }
    }
    $self->diverge('H1', undef, 'harness', $_) for @{ $tr->{problems} };
}

# ---------------------------------------------------------------- what the zone keeps

sub check_readback {
    my $self = shift;
    my $tr = $self->{tr};
    my (%kept, @kept);
    for my $ch (sort keys %{ $tr->{readback} || {} }) {
        my $rb = $tr->{readback}{$ch};
        my $channel = $tr->{chan}[$ch];
        my $where = 'read-back of ' . $self->chname($channel);
        if ($rb->{error}) { $self->diverge('R0', 'poll', $where, $rb->{error}); next }
        my @ms;
        for my $jm (@{ $rb->{messages} }) {
            my $data = $jm->{data} // '';
            if (($jm->{encoding} // '') eq 'base64') { $data = MIME::Base64::decode_base64($data) } else { utf8::encode($data) }
            my $m = $self->identify($jm->{id}, $data);
            if (!$m) { $self->diverge('R6', 'zone', $where, "retains $jm->{id}, never published"); next }
            $self->diverge('R6', 'zone', $where, 'retains ' . $self->mdesc($m) . ' with other data') if $data ne $m->{data};
            $self->diverge('R6', 'zone', $where, 'retains ' . $self->mdesc($m) . ' under another channel') if $m->{channel} ne $channel;
            push @ms, $m if $m->{acked};
            $kept{ $m->{id} } = $m if $m->{acked};
        }
        $self->diverge('R2', 'zone', $where, scalar(@ms) . " messages retained, history is $tr->{history}") if @ms > $tr->{history};
        # a suffix of what was published since the last DELETE
        my ($last_del) = sort { $b->{t_ack} <=> $a->{t_ack} } grep { $_->{channel} eq $channel && ($_->{status} // 0) == 200 } @{ $tr->{deletes} };
        my @pub = grep { $_->{acked} && (!$last_del || $_->{t_send} > $last_del->{t_ack}) } @{ $self->{by_channel}{$channel} || [] };
        my $seen_kept;
        for my $m (@pub) {
            if ($kept{ $m->{id} }) { $seen_kept = $m; next }
            next unless $seen_kept;
            $self->diverge('R1', 'zone', $where, 'retains ' . $self->mdesc($seen_kept) . ' but not the newer ' . $self->mdesc($m));
            last;
        }
        for my $m (@ms) {
            $self->diverge('R4', 'zone', $where, 'retains ' . $self->mdesc($m) . ', expired')
                if id_ms($m->{id}) + $tr->{ttl_ms} + 1000 < $rb->{t_first} * 1000;
            my ($d) = grep { $_->{channel} eq $channel && ($_->{status} // 0) == 200 && $_->{t_send} > $m->{t_ack} } @{ $tr->{deletes} };
            $self->diverge('R5', 'pub', $where, 'retains ' . $self->mdesc($m) . ', deleted at ' . $self->rel($d->{t_send})) if $d;
        }
    }
    return unless $tr->{readback} && !grep { $_->{error} } values %{ $tr->{readback} };
    # what the zone lost beyond history, ttl and DELETE: older than everything it kept
    my @evicted;
    for my $m (@{ $self->{acked} }) {
        next if $kept{ $m->{id} };
        my ($ch) = grep { $tr->{chan}[$_] eq $m->{channel} } 0 .. $#{ $tr->{chan} };
        my $why = $self->maybe_lost($m, $tr->{readback}{$ch}{t});
        next if $why && $why ne 'evicted';
        push @evicted, [ $m, $why ];
    }
    return unless @evicted;
    if (!$tr->{evicts}) {
        $self->diverge('R3', 'zone', 'read-back', scalar(@evicted) . ' message(s) gone from a zone that never had to evict: '
                       . join(', ', map { $_->[0]{label} . ' ' . $self->chname($_->[0]{channel}) . " $_->[0]{id}" } @evicted[0 .. ($#evicted < 5 ? $#evicted : 5)]));
        return;
    }
    my $newest_gone = (sort { $b->{key} cmp $a->{key} } map { $_->[0] } @evicted)[0];
    my ($older_kept) = grep { $kept{ $_->{id} } && $_->{key} lt $newest_gone->{key} } @{ $self->{acked} };
    $self->diverge('R3', 'zone', 'read-back', 'evicted ' . $self->mdesc($newest_gone) . ' but kept the older '
                   . $self->mdesc($older_kept) . ' (the oldest messages go first)') if $older_kept;
}

sub check_log {
    my $self = shift;
    my $tr = $self->{tr};
    for my $l (@{ $tr->{log} || [] }) {
        next if @{ $tr->{kills} } && $l =~ /exited on signal 9|was locked by/;
        $self->diverge('E1', 'cost', 'error log', $l);
    }
}

1;

package Model::Runner;

=head1 NAME

Model::Runner - runs schedules (L<Model::Schedule>) against one nginx and records what happened

=head1 SYNOPSIS

    my $runner = Model::Runner->new;                 # starts nginx (ChannelsTest)
    my $trace = $runner->run(Model::Schedule->generate($seed));
    my @div = Model::Judge->new($trace)->divergences;

=head1 DESCRIPTION

One nginx (3 workers, four zones, see C<conf>) serves many schedules in turn; each schedule
has its own channels (named after the seed and a run counter), so a schedule sees only its
own messages. The runner is one process with one select loop: every client (SSE streams
over HTTP/1.0, 1.1 from Perl sockets, over HTTP/1.1 and HTTP/2 from curl; long-poll loops
likewise), every publish and every DELETE is a non-blocking exchange in that loop, so
clients keep reading while the schedule goes on (a reload waits for the new workers, a
barrier for the readers, but nobody stops reading meanwhile).

The trace records, with times: every publish (sent, answered, status, id), DELETE, reload,
kill; every client's connections (request, response head, each event or answer, how it
ended, when it was stalled); the barriers and the final drain (who lacked what); what the
zone retains at the end (read back with long-polls from cursor 0-0); the error log lines
that must not be there. At the end of a schedule every channel gets an "END" message and
every client reads until it has it, so that nothing a client should have got can hide
behind the end of the schedule.

=cut

use strict;
use warnings;
use Time::HiRes ();
use IO::Select;
use POSIX ();
use JSON::PP ();
use ChannelsTest qw(id_parse);
use ChannelsTest::SseParser;
use CurlStream;
use Model::Http;
use Model::Schedule;
use Model::Judge;

# Cpanel::JSON::XS when installed (Debian: libcpanel-json-xs-perl): many times faster on MBs
my $JSON = eval { require Cpanel::JSON::XS; Cpanel::JSON::XS->new->utf8->allow_nonref } || JSON::PP->new->utf8->allow_nonref;

our %ZONES = (
    big  => { size => '32m',  history => 1000, ttl => '1h',     ttl_ms => 3_600_000 },
    hist => { size => '8m',   history => 5,    ttl => '1h',     ttl_ms => 3_600_000 },
    tiny => { size => '1m',   history => 1000, ttl => '1h',     ttl_ms => 3_600_000, evicts => 1 },
    ttl  => { size => '8m',   history => 1000, ttl => '1500ms', ttl_ms => 1500 },
);
our %MODES = (new => ['newest', '0'], old => ['oldest', '1s'], last3 => ['-3', '30s']);
our $WORKERS = 3;
our $LOG_LEVEL = $ENV{MODEL_LOG_LEVEL} || 'warn';   # info: everything, for a replay

sub now { Time::HiRes::time() }
sub zone_bytes { my $s = shift; $s =~ /^(\d+)([km]?)$/ or die "zone size $s\n"; $1 * { '' => 1, k => 1024, m => 1 << 20 }->{$2} }

# The http{} text: per zone and first-message mode an SSE, a long-poll (json) and a raw
# long-poll location, on an HTTP/1.x port and an h2c port; publish locations per zone.
sub conf {
    my $zones = join '', map { "    channel_zone zone=$_:$ZONES{$_}{size} history=$ZONES{$_}{history} ttl=$ZONES{$_}{ttl};\n" } sort keys %ZONES;
    my $subs = '';
    for my $z (sort keys %ZONES) {
        for my $m (sort keys %MODES) {
            my ($first, $ping) = @{ $MODES{$m} };
            $subs .= "        location = /$z/sse/$m  { channel_first_message $first; sse_ping $ping; sse_channel \$arg_ch zone=$z; }\n"
                   . "        location = /$z/poll/$m { channel_first_message $first; longpoll_channel \$arg_ch zone=$z; }\n"
                   . "        location = /$z/raw/$m  { channel_first_message $first; longpoll_channel \$arg_ch zone=$z format=raw; }\n";
        }
    }
    my $pubs = join '', map { "        location ~ ^/$_/pub/(?<ch>[\\w.:-]+)\$ { publish_channel \$ch zone=$_; }\n" } sort keys %ZONES;
    return <<"CONF";
    error_log logs/error.log $LOG_LEVEL;    # alerts still show; info lines would fill the disk
    access_log off;
$zones
    longpoll_timeout 3s;
    client_max_body_size 1m;
    client_body_buffer_size 1m;
    client_body_timeout 30s;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
$subs    }
    server {
        listen 127.0.0.1:%%PORT_2%% http2 reuseport;
$subs    }
    server {
        listen 127.0.0.1:%%PORT_1%% reuseport;
$pubs        location = /stats { channel_stats; }
    }
CONF
}

sub new {
    my ($class, %o) = @_;
    my $self = bless { runs => 0, verbose => $o{verbose} }, $class;
    $self->_start_nginx;
    return $self;
}

sub _start_nginx {
    my $self = shift;
    $self->{t} = ChannelsTest->new(workers => $WORKERS, conf => conf(), worker_connections => 2048,
                                   main_conf => 'worker_shutdown_timeout 20s;');
    # a kill -9 is part of some schedules; the error log of each schedule is checked by the judge
    $self->{t}->skip_log_check;
    $self->{log_offset} = $self->{t}->log_mark;
    $self->{last_id} = undef;
}

sub nginx { $_[0]{t} }

# A fresh nginx (after a schedule that broke it: a crashed worker, old workers that hang).
sub restart_nginx {
    my $self = shift;
    my $old = delete $self->{t};
    $old->stop(graceful => 0) if $old;
    $old->finish if $old;
    $self->_start_nginx;
}

sub port { $_[0]{t}->port($_[1]) }

# ---------------------------------------------------------------- the loop

sub actors {
    my $self = shift;
    my @a = grep { !$_->done } @{ $self->{requests} };
    $self->{requests} = \@a;
    return (@a, map { $_->transports } @{ $self->{clients} });
}

# Runs the loop until $cond returns true or $timeout seconds pass; returns $cond's value.
sub pump {
    my ($self, $cond, $timeout) = @_;
    my $deadline = now() + $timeout;
    while (1) {
        my $v = $cond->();
        return $v if $v;
        my $t = now();
        return 0 if $t >= $deadline;
        $self->turn($deadline - $t < 0.02 ? $deadline - $t : 0.02);
    }
}

sub sleep_pumping { my ($self, $secs) = @_; $self->pump(sub { 0 }, $secs) }

sub turn {
    my ($self, $max_wait) = @_;
    my (%by_fd, $r, $w);
    $r = IO::Select->new;
    $w = IO::Select->new;
    my $wait = $max_wait;
    for my $a ($self->actors) {
        my $fh = $a->fh or next;
        my $fd = fileno $fh;
        next unless defined $fd;
        $by_fd{$fd} = $a;
        $r->add($fh) if $a->want_read;
        $w->add($fh) if $a->can('want_write') && $a->want_write;
        if (my $nt = $a->next_time) {
            my $d = $nt - now();
            $wait = $d if $d < $wait;
        }
    }
    $wait = 0 if $wait < 0;
    my ($rr, $ww) = IO::Select->select($r, $w, undef, $wait);
    for my $fh (@{ $ww || [] }) {
        my $a = $by_fd{ fileno $fh } or next;
        $a->on_writable unless $a->done;
    }
    for my $fh (@{ $rr || [] }) {
        my $fd = fileno $fh;
        next unless defined $fd;
        my $a = $by_fd{$fd} or next;
        $a->on_readable unless $a->done;
    }
    $_->tick(now()) for @{ $self->{clients} };
}

# ---------------------------------------------------------------- requests

sub request {
    my ($self, %o) = @_;
    my $h = Model::Http->new(%o);
    push @{ $self->{requests} }, $h;
    return $h;
}

sub uri_escape {
    my $s = shift;
    $s =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

# Starts a publish; returns its trace record (filled when the answer comes).
sub publish {
    my ($self, $ch, $msg, %o) = @_;
    my $tr = $self->{trace};
    my $label = $o{label} // "m$msg->{n}";
    my $data = $o{data} // Model::Schedule::payload($msg, $label);
    my $channel = $tr->{chan}[$ch];
    my $path = "/$tr->{zone}/pub/$channel";
    my @h;
    push @h, 'Content-Type' => $msg->{ctype} if defined $msg->{ctype};
    if (defined $msg->{event}) {
        if (($msg->{event_in} // 'header') eq 'arg') { $path .= '?event=' . uri_escape($msg->{event}) }
        else { push @h, 'Event-Type' => $msg->{event} }
    }
    my $rec = { n => $msg->{n}, label => $label, ch => $ch, channel => $channel, data => $data,
                event => $msg->{event}, ctype => $msg->{ctype}, method => $msg->{method} // 'POST' };
    push @{ $tr->{publishes} }, $rec;
    my $half = length($data) > 1 ? int(length($data) / 2) : 0;
    my $http = $self->request(
        port => $self->port(1), method => $rec->{method}, path => $path, headers => \@h, body => $data,
        ($o{straddle} && $half ? (hold => length($data) - $half) : ()),
        on_end => sub {
            my $h = shift;
            $rec->{t_ack} = $h->{t_end};
            $rec->{status} = $h->{status};
            $rec->{end} = $h->{end};
            $rec->{answer} = $h->{body};
            my $j = $h->{status} ? eval { $JSON->decode($h->{body}) } : undef;
            $rec->{json} = $j;
            $rec->{id} = $j->{id} if $h->{status} == 201 && ref $j eq 'HASH';
            $self->{last_id} = $rec->{id} if $rec->{id};
        });
    $rec->{t_send} = $http->{t_send};
    $rec->{http} = $http;
    return $rec;
}

sub await {
    my ($self, $rec, $timeout) = @_;
    return $self->pump(sub { defined $rec->{t_ack} || $rec->{http}->done }, $timeout // 20);
}

sub delete_channel {
    my ($self, $ch) = @_;
    my $tr = $self->{trace};
    my $rec = { ch => $ch, channel => $tr->{chan}[$ch] };
    push @{ $tr->{deletes} }, $rec;
    my $h = $self->request(port => $self->port(1), method => 'DELETE', path => "/$tr->{zone}/pub/$rec->{channel}",
        on_end => sub {
            my $h = shift;
            @$rec{qw(t_ack status end)} = ($h->{t_end}, $h->{status}, $h->{end});
            $rec->{json} = eval { $JSON->decode($h->{body}) } if $h->{status} == 200;
        });
    $rec->{t_send} = $h->{t_send};
    $self->pump(sub { $h->done }, 20);
    return $rec;
}

# ---------------------------------------------------------------- nginx: reload, kill

sub workers_now { my $self = shift; my @w = $self->{t}->worker_pids; @w }

sub reload {
    my ($self, $between) = @_;
    my $tr = $self->{trace};
    $self->settle_workers;
    my %old = map { $_ => 1 } $self->workers_now;
    my $rec = { t => now() };
    push @{ $tr->{reloads} }, $rec;
    kill 'HUP', $self->{t}->master_pid;
    my $ok = $self->pump(sub {
        my @w = $self->workers_now;
        @w == $WORKERS && !grep { $old{$_} } @w;
    }, 20);
    $rec->{t_ready} = now();
    push @{ $tr->{problems} }, 'reload: the new workers did not start within 20 s' unless $ok;
    $between->() if $between;
    return $ok;
}

sub kill_worker {
    my $self = shift;
    my $tr = $self->{trace};
    $self->settle_workers;
    my @w = $self->workers_now;
    return unless @w;
    my $victim = $w[ int rand @w ];
    push @{ $tr->{kills} }, { t => now(), pid => $victim };
    kill 'KILL', $victim;
    my $ok = $self->pump(sub { my @n = $self->workers_now; @n == $WORKERS && !grep { $_ == $victim } @n }, 20);
    $tr->{kills}[-1]{t_ready} = now();
    push @{ $tr->{problems} }, "kill: no replacement for worker $victim within 20 s" unless $ok;
}

# Waits (reading meanwhile) until old workers of a reload have exited.
sub settle_workers {
    my ($self, $timeout) = @_;
    my $ok = $self->pump(sub { my @a = $self->{t}->all_worker_pids; @a <= $WORKERS }, $timeout // 20);
    if (!$ok) {
        push @{ $self->{trace}{problems} },
            'old workers still running ' . ($timeout // 20) . ' s after a reload (streams not ended? timers left?)';
    }
    return $ok;
}

# ---------------------------------------------------------------- cursors

sub cursor_for {
    my ($self, $kind, $spec) = @_;
    my $tr = $self->{trace};
    my @acked = grep { $_->{id} } @{ $tr->{publishes} };
    return undef if $kind eq 'none';
    return $spec->{malformed} if $kind eq 'malformed';
    return $acked[ int rand @acked ]{id} if $kind eq 'valid' && @acked;
    return $acked[0]{id} if $kind eq 'evicted' && @acked;
    if ($kind eq 'future') {
        my ($ms) = id_parse($self->{last_id} // '') ;
        $ms //= int(now() * 1000);
        return ($ms + $spec->{future_ms}) . '-0';
    }
    return undef;
}

# ---------------------------------------------------------------- one schedule

sub run {
    my ($self, $sched) = @_;
    $self->{runs}++;
    my $z = $ZONES{ $sched->{zone} };
    my $tag = sprintf 's%dr%dp%d', $sched->{seed}, $self->{runs}, $$ % 10000;
    my $tr = $self->{trace} = {
        seed => $sched->{seed}, zone => $sched->{zone}, history => $z->{history}, ttl_ms => $z->{ttl_ms},
        evicts => $z->{evicts} ? 1 : 0, zone_bytes => zone_bytes($z->{size}), t0 => now(), min_id => $self->{last_id},
        chan => [ map { "$tag.c$_" } 0 .. $sched->{nch} - 1 ],
        publishes => [], deletes => [], reloads => [], kills => [], clients => [], barriers => [],
        problems => [], schedule => $sched,
    };
    $self->{requests} = [];
    $self->{clients} = [];
    $self->{end_sent} = {};
    my $log_from = $self->{log_offset};
    my @specs = @{ $sched->{clients} };
    for my $a (@{ $sched->{actions} }) {
        $self->sleep_pumping($a->{gap}) if $a->{gap};
        $self->act($a, \@specs);
    }
    $tr->{t_actions} = now();
    $self->finish_schedule;
    my @log = $self->log_lines($log_from);
    $tr->{log} = [ grep { /\[(?:alert|crit|emerg)\]|Sanitizer|runtime error:/ } @log ];
    # A worker killed in the middle of a zone update: the zone was rebuilt empty.
    my %torn = map { /was left half-updated by process (\d+)/ ? ($1 => 1) : () } @log;
    $_->{torn} = 1 for grep { $torn{ $_->{pid} } } @{ $tr->{kills} };
    $tr->{t_end} = now();
    delete $_->{http} for @{ $tr->{publishes} };
    # A client and its last transport refer to each other (the transport, or its callbacks,
    # hold the client): left so, every schedule's clients stay in memory with all they
    # received (7 MB a schedule, GBs over a stress run), and each fork of a curl client then
    # copies the page tables of all that: at 3.7 GB, fork() alone held this loop 0.4-1 s
    # under load, and h2/curl clients fell seconds behind (the "h2 stalls" of `make stress`).
    delete @$_{qw(cur r)} for @{ $self->{clients} };
    $self->{clients} = [];
    $self->{requests} = [];
    return $tr;
}

sub client { my ($self, $n) = @_; (grep { $_->{spec}{n} == $n } @{ $self->{clients} })[0] }

sub act {
    my ($self, $a, $specs) = @_;
    my $d = $a->{do};
    if ($d eq 'connect') {
        my $spec = $specs->[ $a->{client} ];
        my $class = $spec->{kind} eq 'sse' ? 'Model::Runner::Sse' : 'Model::Runner::Poll';
        my $c = $class->new($self, $spec);
        push @{ $self->{clients} }, $c;
        push @{ $self->{trace}{clients} }, $c->{rec};
        $c->start($spec->{cursor});
        # a stream is attached once its header came: wait a little for it, reading meanwhile
        $self->pump(sub { $c->attached }, 5) if $spec->{kind} eq 'sse';
    } elsif ($d eq 'publish') {
        my $rec = $self->publish($a->{ch}, $a->{msg});
        $self->await($rec) if $a->{wait};
    } elsif ($d eq 'burst') {
        $self->publish($_->{ch}, $_) for @{ $a->{msgs} };
    } elsif ($d eq 'straddle') {
        my $rec = $self->publish($a->{ch}, $a->{msg}, straddle => 1);
        # the request reaches a worker, which waits for the rest of the body
        $self->sleep_pumping(0.05);
        $self->reload(sub { $rec->{http}->release });
        $self->await($rec);
    } elsif ($d eq 'stall') {
        my $c = $self->client($a->{client});
        $c->stall($a->{secs}) if $c;
    } elsif ($d eq 'drop') {
        my $c = $self->client($a->{client});
        $c->drop($a->{secs}) if $c;
    } elsif ($d eq 'resubscribe') {
        my $c = $self->client($a->{client});
        $c->restart($a->{cursor}) if $c;
    } elsif ($d eq 'delete') {
        $self->delete_channel($a->{ch});
    } elsif ($d eq 'reload') {
        $self->reload;
    } elsif ($d eq 'kill') {
        $self->kill_worker;
    } elsif ($d eq 'sleep') {
        $self->sleep_pumping($a->{secs});
    } elsif ($d eq 'barrier') {
        $self->barrier;
    }
}

# Every client reading at full speed must have (or be told it lost) every message published
# to its channels, within 5 s, with nothing more published meanwhile (README "SSE": whichever
# worker published it).
sub barrier {
    my ($self, $final) = @_;
    my $tr = $self->{trace};
    my ($judge, $lacking);
    my $t = now();
    my $ok = $self->pump(sub {
        # every publish answered first
        return 0 if grep { !defined $_->{t_ack} && !$_->{http}->done } @{ $tr->{publishes} };
        $judge //= Model::Judge->new($tr);
        # lost by then, not later: nothing is published meanwhile, and a message expiring
        # while the barrier waits must not excuse a delivery that never came
        $lacking = [ map { $_->lacking($judge, $t + 0.3) } grep { $_->fast } @{ $self->{clients} } ];
        !@$lacking;
    }, 5);
    push @{ $tr->{barriers} }, { t => $t, ok => $ok ? 1 : 0, final => $final ? 1 : 0, lacking => $ok ? [] : $lacking };
}

sub finish_schedule {
    my $self = shift;
    my $tr = $self->{trace};
    $self->pump(sub { !grep { !$_->{http}->done } @{ $tr->{publishes} } }, 20);
    $self->settle_workers;
    $tr->{t_settled} = now();
    $self->barrier('final');
    $tr->{t_barrier} = now();
    # stalls end and slow readers read at full speed: the END drain need not wait for them
    $_->hurry for @{ $self->{clients} };
    # END on every channel, then every client reads until it has END on each of its channels
    $tr->{end_ids} = {};
    for my $ch (0 .. $#{ $tr->{chan} }) {
        my $rec = $self->publish($ch, { n => 'END', size => 3 }, label => 'END', data => 'END');
        $self->await($rec);
        $tr->{end_ids}{$ch} = $rec->{id};
        $self->{end_sent}{ $tr->{chan}[$ch] } = $rec->{t_send};
    }
    my @waiting;
    my $ok = $self->pump(sub { @waiting = grep { !$_->drained } @{ $self->{clients} }; !@waiting }, 15);
    $tr->{drain} = { ok => $ok ? 1 : 0, lacking => [ map { $_->drain_report } @waiting ] };
    $tr->{t_drained} = now();
    $_->stop for @{ $self->{clients} };
    $self->read_back;
    $tr->{t_read_back} = now();
    $self->settle_workers;
}

# What the zone retains at the end, per channel: long-polls from cursor 0-0 (each answers at
# once while something is left after its cursor).
sub read_back {
    my $self = shift;
    my $tr = $self->{trace};
    for my $ch (0 .. $#{ $tr->{chan} }) {
        my ($cursor, @msgs, $err) = ('0-0');
        my $t_first = now();
        for (1 .. 60) {
            my $h = $self->request(port => $self->port(0), method => 'GET',
                                   path => "/$tr->{zone}/poll/new?ch=$tr->{chan}[$ch]",
                                   headers => [ 'Last-Event-ID' => $cursor ]);
            $self->pump(sub { $h->done }, 10);
            last if $h->{status} == 204;   # nothing (more) retained: it waited for the timeout
            if ($h->{status} == 410) {     # a deletion after the cursor: read on after it
                my $next = $h->{headers}{'last-event-id'};
                if (!defined $next || $next eq $cursor) { $err = "read-back answered 410 without a new cursor"; last }
                $cursor = $next;
                next;
            }
            if ($h->{status} != 200) { $err = "read-back answered $h->{status} ($h->{end})"; last }
            my $j = eval { $JSON->decode($h->{body}) };
            if (!$j || ref $j->{messages} ne 'ARRAY') { $err = 'read-back answer not JSON'; last }
            push @msgs, @{ $j->{messages} };
            $cursor = $j->{last_event_id};
            last if grep { ($_->{data} // '') eq 'END' } @{ $j->{messages} };
        }
        $tr->{readback}{$ch} = { messages => \@msgs, error => $err, t_first => $t_first, t => now() };
    }
}

sub log_lines {
    my ($self, $from) = @_;
    my $f = $self->{t}->prefix . '/logs/error.log';
    open my $fh, '<', $f or return [];
    seek $fh, $from, 0;
    local $/;
    my $text = <$fh> // '';
    $self->{log_offset} = $from + length $text;
    return split /\n/, $text;
}

# ================================================================ SSE client

package Model::Runner::Sse;

use strict;
use warnings;

sub now { Time::HiRes::time() }

sub new {
    my ($class, $runner, $spec) = @_;
    my $tr = $runner->{trace};
    my @chs = map { $tr->{chan}[$_] } @{ $spec->{channels} };
    my $rec = { %$spec, channel_ids => \@chs, conns => [] };
    delete $rec->{malformed} unless $spec->{cursor} eq 'malformed';
    return bless { r => $runner, spec => $spec, rec => $rec, chs => \@chs }, $class;
}

sub transports { my $c = $_[0]{cur}; $c && !$c->done ? ($c) : () }
sub conn { $_[0]{rec}{conns}[-1] }

sub attached { my $s = shift; my $c = $s->conn; $s->{done} || ($c && (defined $c->{t_head} || defined $c->{t_end})) }

sub fast {
    my $s = shift;
    return 0 if $s->{done} || $s->{spec}{reading} eq 'slow' || $s->{paused};
    return 1;
}

# Starts over with a new cursor kind (a new EventSource).
sub start {
    my ($s, $kind) = @_;
    my $spec = $s->{spec};
    my $cursor = $s->{r}->cursor_for($kind, $spec);
    $s->{arg} = undef;
    $s->{hdr} = undef;
    if (defined $cursor) {
        if ($spec->{cursor_in} eq 'arg') { $s->{arg} = $cursor } else { $s->{hdr} = $cursor }
    }
    $s->{cursor_kind} = $kind;
    $s->{last_id} = undef;
    $s->open;
}

sub open {
    my $s = shift;
    my ($r, $spec) = ($s->{r}, $s->{spec});
    my $tr = $r->{trace};
    my $path = "/$tr->{zone}/sse/$spec->{mode}?ch=" . join(',', @{ $s->{chs} });
    $path .= '&last_event_id=' . Model::Runner::uri_escape($s->{arg}) if defined $s->{arg};
    # EventSource: the URL stays; Last-Event-ID is the last id seen, once there is one
    my $hdr = defined $s->{last_id} ? $s->{last_id} : $s->{hdr};
    my $conn = { t_req => now(), header_cursor => $hdr, arg_cursor => $s->{arg}, cursor_kind => $s->{cursor_kind},
                 events => [], paused => [], slow => $spec->{reading} eq 'slow' && !$s->{hurry} ? 1 : 0, status => 0,
                 channels => [ @{ $s->{chs} } ] };
    push @{ $s->{rec}{conns} }, $conn;
    $s->{parser} = ChannelsTest::SseParser->new;
    $s->{reconnect_at} = undef;
    my %h = (Accept => 'text/event-stream', defined $hdr ? ('Last-Event-ID' => $hdr) : ());
    if ($spec->{proto} eq 'h2' || $spec->{proto} eq 'curl1.1') {
        $s->{cur} = Model::Runner::CurlSse->new($s, $conn, url => 'http://127.0.0.1:'
            . $r->port($spec->{proto} eq 'h2' ? 2 : 0) . $path, http2 => $spec->{proto} eq 'h2',
            headers => \%h, limit_rate => $conn->{slow} ? '500k' : undef);
    } else {
        my $http = Model::Http->new(
            port => $r->port(0), method => 'GET', path => $path, headers => [ %h ], version => $spec->{proto},
            rcvbuf => $conn->{slow} ? 8192 : undef,
            on_head => sub { my $h = shift; $conn->{t_head} = $h->{t_head}; $conn->{status} = $h->{status};
                             $conn->{headers} = $h->{headers};
                             $h->{on_data} = undef if $h->{status} != 200 },
            on_data => sub { $s->take($conn, $_[1]) },
            on_end  => sub { my $h = shift; $conn->{body} = $h->{body} if $h->{status} != 200; $s->ended($conn, $h->{end}) });
        $http->slow if $conn->{slow};
        $s->{cur} = $http;
        if ($http->done) { $s->ended($conn, $http->{end}) }
    }
    $s->{cur}->pause if $s->{paused};
}

# Body bytes of the stream.
sub take {
    my ($s, $conn, $bytes) = @_;
    my $t = now();
    for my $b ($s->{parser}->feed($bytes)) {
        next if $b->{ping};
        push @{ $conn->{events} }, { t => $t, id => $b->{id}, event => $b->{event}, data => $b->{data},
                                     retry => $b->{retry}, fields => [ map { $_->[0] } @{ $b->{fields} } ] };
        $s->{last_id} = $b->{id} if defined $b->{id};
    }
}

sub ended {
    my ($s, $conn, $how) = @_;
    return if defined $conn->{t_end};
    $conn->{t_end} = now();
    $conn->{end} = $how;
    $conn->{partial} = 1 if $s->{parser} && $s->{parser}->pending;
    return if $s->{done} || $how eq 'closed';
    # EventSource: a 200 stream that ends is resumed; any other answer ends it for good
    if ($conn->{status} && $conn->{status} != 200) { $s->{done} = 1; return }
    $s->{reconnect_at} = now() + 0.05;
}

sub tick {
    my ($s, $t) = @_;
    if ($s->{paused} && $t >= $s->{pause_until}) {
        $s->{paused} = 0;
        my $c = $s->conn;
        push @{ $c->{paused} }, [ $s->{pause_from}, $t ] if $c;
        $s->{cur}->resume if $s->{cur} && !$s->{cur}->done;
    }
    if ($s->{reconnect_at} && $t >= $s->{reconnect_at} && !$s->{done}) {
        $s->{reconnect_at} = undef;
        $s->open;
    }
}

sub stall {
    my ($s, $secs) = @_;
    return if $s->{done};
    $s->{paused} = 1;
    $s->{pause_from} = now();
    $s->{pause_until} = now() + $secs;
    $s->{cur}->pause if $s->{cur} && !$s->{cur}->done;
}

sub drop {
    my ($s, $secs) = @_;
    return if $s->{done};
    $s->{cur}->close if $s->{cur} && !$s->{cur}->done;
    $s->{reconnect_at} = now() + $secs;
}

sub restart {
    my ($s, $kind) = @_;
    return if $s->{done};
    $s->{cur}->close if $s->{cur} && !$s->{cur}->done;
    $s->start($kind);
}

sub hurry {
    my $s = shift;
    return if $s->{done};
    $s->{hurry} = 1;
    $s->{pause_until} = now() if $s->{paused};
    $s->tick(now());
    my $cur = $s->{cur};
    return unless $cur && !$cur->done && $s->conn->{slow};
    if ($cur->isa('Model::Http')) { $cur->{slow} = 0 }
    else { $s->drop(0) }   # curl cannot change its rate: the client resumes at full speed
}

sub stop {
    my $s = shift;
    $s->{done} = 1;
    $s->{reconnect_at} = undef;
    if ($s->{paused}) { $s->{paused} = 0; push @{ $s->conn->{paused} }, [ $s->{pause_from}, now() ] }
    $s->{cur}->close if $s->{cur} && !$s->{cur}->done;
}

# Channels the current connection still holds (not left by channel-deleted).
sub active {
    my ($s, $conn) = @_;
    my %left;
    for my $e (@{ $conn->{events} }) {
        next unless ($e->{event} // '') eq 'channel-deleted';
        my $j = eval { $JSON->decode($e->{data} // '') };
        $left{ $j->{channel} } = 1 if ref $j eq 'HASH' && defined $j->{channel};
    }
    return grep { !$left{$_} } @{ $s->{chs} };
}

sub open_conn { my $s = shift; my $c = $s->conn; $c && defined $c->{t_head} && !defined $c->{t_end} && $c->{status} == 200 ? $c : undef }

# Messages the client should hold by now and does not (for a barrier).
sub lacking {
    my ($s, $judge, $t) = @_;
    my $conn = $s->open_conn or return ({ client => $s->{spec}{n}, why => 'no open stream' });
    my %have = map { defined $_->{id} ? ($_->{id} => 1) : () } @{ $conn->{events} };
    my %active = map { $_ => 1 } $s->active($conn);
    my $cursor = Model::Judge::cursor_of($conn);
    my @miss;
    for my $m (@{ $s->{r}{trace}{publishes} }) {
        next unless $m->{id} && $active{ $m->{channel} } && !$have{ $m->{id} };
        # with a cursor: everything after it; without: what was sent once it was attached
        next unless defined $cursor ? Model::Judge::id_gt($m->{id}, $cursor) : $m->{t_send} > $conn->{t_head};
        next if $judge->maybe_lost($m, $t);
        push @miss, $m->{id};
    }
    return @miss ? ({ client => $s->{spec}{n}, ids => \@miss }) : ();
}

sub drained {
    my $s = shift;
    return 1 if $s->{done};
    my $conn = $s->open_conn or return 0;
    my $ends = $s->{r}{trace}{end_ids};
    my $cursor = Model::Judge::cursor_of($conn);
    my %got = map { ($_->{data} // '') eq 'END' && defined $_->{id} ? ($_->{id} => 1) : () } @{ $conn->{events} };
    my %by_channel = map { $s->{r}{trace}{chan}[$_] => $ends->{$_} } keys %$ends;
    for my $ch ($s->active($conn)) {
        my $end = $by_channel{$ch} or next;
        next if defined $cursor && !Model::Judge::id_gt($end, $cursor);   # a future cursor
        # first_message newest, and END was sent before this stream attached
        next if !defined $cursor && $s->{spec}{mode} eq 'new' && $s->{r}{end_sent}{$ch} < $conn->{t_head};
        return 0 unless $got{$end};
    }
    return 1;
}

sub drain_report {
    my $s = shift;
    my $conn = $s->open_conn;
    return { client => $s->{spec}{n}, why => $conn ? 'END missing on an open stream' : 'no open stream' };
}

# ---------------------------------------------------------------- curl transport (SSE)

package Model::Runner::CurlSse;

use strict;
use warnings;

sub new {
    my ($class, $client, $conn, %o) = @_;
    my $c = CurlStream->new(%o, max_time => 300,
        $ENV{MODEL_CURL_LOG} ? (stderr => "$ENV{MODEL_CURL_LOG}/curl-" . Time::HiRes::time() . '.log') : ());
    return bless { c => $c, client => $client, conn => $conn }, $class;
}

sub fh         { my $s = shift; $s->{c}->eof ? undef : $s->{c}->fh }
sub done       { $_[0]{c}->eof || $_[0]{closed} }
sub want_read  { 1 }
sub want_write { 0 }
sub next_time  { undef }
sub pause      { $_[0]{c}->pause }
sub resume     { $_[0]{c}->resume }

sub on_readable {
    my $s = shift;
    my ($c, $conn) = ($s->{c}, $s->{conn});
    my $had_head = $c->head_seen;
    $c->pump;
    if (!$had_head && $c->head_seen) {
        $conn->{t_head} = Time::HiRes::time();
        $conn->{status} = $c->status;
        $conn->{headers} = $c->headers;
    }
    my $t = Time::HiRes::time();
    for my $b ($c->take_blocks) {
        next if $b->{ping};
        push @{ $conn->{events} }, { t => $t, id => $b->{id}, event => $b->{event}, data => $b->{data},
                                     retry => $b->{retry}, fields => [ map { $_->[0] } @{ $b->{fields} } ] };
        $s->{client}{last_id} = $b->{id} if defined $b->{id};
    }
    if ($c->eof) {
        $conn->{body} = $c->body if $conn->{status} != 200;
        $conn->{curl_exit} = $c->exit_code;
        # curl exits 0 when the response ended as framed (chunked end / END_STREAM)
        $s->{client}->ended($conn, $c->clean_exit ? 'clean' : 'eof');
    }
}

sub close {
    my $s = shift;
    return if $s->done;
    $s->{closed} = 1;
    $s->{c}->close;
    $s->{client}->ended($s->{conn}, 'closed');
}

# ================================================================ long-poll client

package Model::Runner::Poll;

use strict;
use warnings;

sub now { Time::HiRes::time() }

sub new {
    my ($class, $runner, $spec) = @_;
    my $tr = $runner->{trace};
    my @chs = map { $tr->{chan}[$_] } @{ $spec->{channels} };
    my $rec = { %$spec, channel_ids => \@chs, conns => [] };
    delete $rec->{malformed} unless $spec->{cursor} eq 'malformed';
    return bless { r => $runner, spec => $spec, rec => $rec, chs => \@chs, seen_end => {} }, $class;
}

sub transports { my $c = $_[0]{cur}; $c && !$c->done ? ($c) : () }
sub attached { 1 }
sub fast { my $s = shift; !$s->{done} && $s->{spec}{reading} ne 'slow' && !($s->{next_at} && $s->{next_at} > now() + 0.06) }

sub start {
    my ($s, $kind) = @_;
    $s->{cursor} = $s->{r}->cursor_for($kind, $s->{spec});
    $s->{cursor_kind} = $kind;
    $s->{chain} = { t => now(), received => {}, cursor => Model::Judge::valid_id($s->{cursor}) ? $s->{cursor} : undef };
    $s->{new_chain} = 1;
    $s->{seen_end} = {};
    $s->poll;
}

sub poll {
    my $s = shift;
    my ($r, $spec) = ($s->{r}, $s->{spec});
    my $tr = $r->{trace};
    my $fmt = $spec->{format} eq 'raw' ? 'raw' : 'poll';
    my $path = "/$tr->{zone}/$fmt/$spec->{mode}?ch=" . join(',', @{ $s->{chs} });
    my $cursor = $s->{cursor};
    my @h;
    if (defined $cursor) {
        if ($spec->{cursor_in} eq 'arg') { $path .= '&last_event_id=' . Model::Runner::uri_escape($cursor) }
        else { push @h, 'Last-Event-ID' => $cursor }
    }
    # without a valid cursor the request starts afresh (first_message): so does what it owes
    @{ $s->{chain} }{qw(t cursor)} = (now(), undef) unless Model::Judge::valid_id($cursor);
    my $conn = { t_req => now(), cursor_sent => $cursor, cursor_in => $spec->{cursor_in}, status => 0,
                 chain_start => delete($s->{new_chain}) ? 1 : 0, cursor_kind => $s->{cursor_kind},
                 channels => [ @{ $s->{chs} } ], format => $spec->{format} };
    push @{ $s->{rec}{conns} }, $conn;
    $s->{next_at} = undef;
    if ($spec->{proto} eq 'h2') {
        my %hh = @h;
        $s->{cur} = Model::Runner::CurlPoll->new($s, $conn, url => 'http://127.0.0.1:' . $r->port(2) . $path,
                                                 http2 => 1, headers => \%hh);
    } else {
        $s->{cur} = Model::Http->new(port => $r->port(0), method => 'GET', path => $path, headers => \@h,
                                     version => $spec->{proto},
                                     on_end => sub { my $h = shift; $s->answered($conn, $h->{status}, $h->{headers}, $h->{body}, $h->{end}, $h->{t_head}) });
        $s->answered($conn, 0, {}, '', $s->{cur}{end}, undef) if $s->{cur}->done && !defined $conn->{t_end};
    }
}

sub answered {
    my ($s, $conn, $status, $headers, $body, $end, $t_head) = @_;
    return if defined $conn->{t_end};
    $conn->{t_end} = now();
    $conn->{t_head} = $t_head // $conn->{t_end};
    @$conn{qw(status headers body end)} = ($status, $headers, $body, $end);
    return if $end eq 'closed';
    if ($status && $end ne 'clean') {
        # Cut off (its worker killed while sending): what a client makes of a broken answer,
        # nothing; it asks again from the same cursor.
        $s->{next_at} = now() + 0.05;
        return;
    }
    if ($status == 200 && ($headers->{'content-type'} // '') =~ /json/ && $s->{spec}{format} ne 'raw') {
        $conn->{json} = eval { $JSON->decode($body) };
    }
    my $next = $headers->{'last-event-id'};
    if ($status == 200) {
        my @ids = $conn->{json} ? map { [ $_->{id}, $_->{data} ] } @{ $conn->{json}{messages} || [] }
                                : ([ $next, $body ]);
        for (@ids) {
            next unless defined $_->[0];
            $s->{chain}{received}{ $_->[0] } = 1;
            $s->{seen_end}{ $_->[0] } = 1 if ($_->[1] // '') eq 'END';
        }
    }
    if ($status == 410) { $s->{done} = 1; return }
    # a chain that started without a cursor owes, from its first answer on, what follows it
    $s->{chain}{cursor} //= $next if ($status == 200 || $status == 204) && Model::Judge::valid_id($next);
    $s->{cursor} = $next if ($status == 200 || $status == 204) && defined $next && length $next;
    $s->{next_at} = $s->{pause_until} && $s->{pause_until} > now() ? $s->{pause_until}
                  : now() + ($status == 200 || $status == 204 ? 0 : 0.05);
}

sub tick {
    my ($s, $t) = @_;
    return if $s->{done} || $s->{stopped};
    if ($s->{next_at} && $t >= $s->{next_at} && !($s->{cur} && !$s->{cur}->done)) {
        $s->poll;
    }
}

# A long-poll client stalls by not asking again for a while.
sub stall {
    my ($s, $secs) = @_;
    $s->{pause_until} = now() + $secs;
    $s->{next_at} = $s->{pause_until} if $s->{next_at};
}

sub drop {
    my ($s, $secs) = @_;
    return if $s->{done};
    $s->{cur}->close if $s->{cur} && !$s->{cur}->done;
    $s->{next_at} = now() + $secs;
}

sub restart {
    my ($s, $kind) = @_;
    return if $s->{done};
    $s->{cur}->close if $s->{cur} && !$s->{cur}->done;
    $s->start($kind);
}

sub hurry {
    my $s = shift;
    $s->{pause_until} = undef;
    $s->{next_at} = now() if $s->{next_at} && $s->{next_at} > now();
}

sub stop {
    my $s = shift;
    $s->{stopped} = 1;
    $s->{cur}->close if $s->{cur} && !$s->{cur}->done;
}

sub lacking {
    my ($s, $judge, $t) = @_;
    my %mine = map { $_ => 1 } @{ $s->{chs} };
    my ($start, $cursor) = @{ $s->{chain} }{qw(t cursor)};
    return () unless defined $cursor;   # not answered yet: where it attached is not known
    my @miss;
    for my $m (@{ $s->{r}{trace}{publishes} }) {
        next unless $m->{id} && $mine{ $m->{channel} } && !$s->{chain}{received}{ $m->{id} };
        next unless Model::Judge::id_gt($m->{id}, $cursor);
        next if $judge->maybe_lost($m, $t);
        push @miss, $m->{id};
    }
    return @miss ? ({ client => $s->{spec}{n}, ids => \@miss }) : ();
}

sub drained {
    my $s = shift;
    return 1 if $s->{done};
    my $ends = $s->{r}{trace}{end_ids};
    my %by_channel = map { $s->{r}{trace}{chan}[$_] => $ends->{$_} } keys %$ends;
    for my $ch (@{ $s->{chs} }) {
        my $end = $by_channel{$ch} or next;
        next if $s->{seen_end}{$end};
        # a cursor at or past END (a future cursor, or the first answer of a chain that
        # started after END with first_message newest)
        next if Model::Judge::valid_id($s->{cursor}) && !Model::Judge::id_gt($end, $s->{cursor});
        next if !defined $s->{chain}{cursor} && $s->{spec}{mode} eq 'new' && $s->{r}{end_sent}{$ch} < $s->{chain}{t};
        return 0;
    }
    return 1;
}

sub drain_report { { client => $_[0]{spec}{n}, why => 'END missing' } }

# ---------------------------------------------------------------- curl transport (long-poll)

package Model::Runner::CurlPoll;

use strict;
use warnings;

sub new {
    my ($class, $client, $conn, %o) = @_;
    return bless { c => CurlStream->new(%o, max_time => 60), client => $client, conn => $conn }, $class;
}

sub fh         { my $s = shift; $s->{c}->eof ? undef : $s->{c}->fh }
sub done       { $_[0]{c}->eof || $_[0]{closed} }
sub want_read  { 1 }
sub want_write { 0 }
sub next_time  { undef }

sub on_readable {
    my $s = shift;
    my $c = $s->{c};
    my $had = $c->head_seen;
    $c->pump;
    $s->{t_head} = Time::HiRes::time() if !$had && $c->head_seen;
    if ($c->eof) {
        $s->{conn}{curl_exit} = $c->exit_code;
        $s->{client}->answered($s->{conn}, $c->status, $c->headers, $c->body, $c->clean_exit ? 'clean' : 'eof', $s->{t_head});
    }
}

sub close {
    my $s = shift;
    return if $s->done;
    $s->{closed} = 1;
    $s->{c}->close;
    $s->{client}->answered($s->{conn}, 0, {}, '', 'closed', undef);
}

1;

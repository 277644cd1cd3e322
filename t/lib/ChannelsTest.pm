package ChannelsTest;

=head1 NAME

ChannelsTest - start nginx with a per-test config and talk to it over raw sockets

=head1 SYNOPSIS

    use FindBin;
    use lib "$FindBin::Bin/lib";
    use Test::More;
    use ChannelsTest qw(id_cmp);

    my $t = ChannelsTest->new(workers => 2, conf => <<'EOF');
        channel_zone zone=events:1m history=100 ttl=1h;
        server {
            listen 127.0.0.1:%%PORT_0%%;
            location ~ ^/events/(?<ch>[\w.:-]+)$ { sse_channel $ch; }
            location ~ ^/poll/(?<ch>[\w.:-]+)$   { longpoll_channel $ch; }
        }
        server {
            listen 127.0.0.1:%%PORT_1%%;
            location ~ ^/pub/(?<ch>[\w.:-]+)$ { publish_channel $ch; }
            location = /stats                 { channel_stats; }
        }
    EOF

    my $s = $t->sse_open('/events/news');           # port 0 unless port => N
    is($s->status, 200);
    my $r = $t->http(POST => '/pub/news', body => 'hello', port => 1);
    is($r->{status}, 201);
    my $ev = $s->next_event(timeout => 5);
    is($ev->{data}, 'hello');

    done_testing;   # the error-log check runs here (one extra test per started instance)

=head1 DESCRIPTION

Each C<ChannelsTest> object owns one nginx: a fresh temporary prefix directory
(C<conf/>, C<logs/>, temp paths), free loopback ports, and a master process
started in the foreground (C<daemon off; master_process on;>) by fork/exec.
Everything is awaited with deadlines (no fixed sleeps), so test files can run
in parallel with C<prove -j>.

Environment: C<CHANNELS_MODULE> (path of the module; default
C<build/ngx_http_channels_module.so> of this repository), C<NGINX_BIN>
(default C</usr/sbin/nginx>), C<CHANNELS_TEST_KEEP=1> keeps the prefix
directory after the test (it is also kept, and its path printed, when the
test file fails), C<CHANNELS_TEST_VERBOSE=1> prints the prefix at start.

=head2 Error-log check

When testing is done (C<done_testing>, or the end of the file), when the object
is destroyed, or when C<< $t->finish >> is called, nginx is stopped
(gracefully: C<nginx -s quit>, so a module that leaves connections open or
keeps a non-cancelable timer shows up as a failure) and, if nginx ever ran,
one test is added: "nginx error log clean". It fails if C<logs/error.log> or nginx's
stderr holds an C<[alert]>, C<[emerg]> or C<[crit]> line, a deprecation warning, or a
sanitizer report
(C<AddressSanitizer>, C<LeakSanitizer>, C<runtime error:>), or if nginx did
not exit in time. Under a numeric C<plan> the passing test is not emitted (only a
failure is). C<< $t->skip_log_check >> turns the check off for tests
that provoke such lines on purpose; C<< $t->allow_log(qr/.../) >> tolerates only
matching lines (e.g. C<qr/exited on signal 9/> after a C<kill -9>).

=head2 Constructor and process control

=over

=item C<< ChannelsTest->new(%opt) >>

C<conf> (text placed inside C<http { }>), C<workers> (default 1),
C<main_conf> (text at the top level, e.g. C<worker_shutdown_timeout 5s;>),
C<events_conf>, C<worker_connections> (default 4096), C<ports> (how many
ports to allocate at least; by default as many as the highest C<%%PORT_N%%>
in the config needs), C<module> (0: no C<load_module> line, for plain
nginx), C<start> (0: write the config but do not start), C<finish>
(C<'quit'> default, or C<'stop'> for a fast shutdown at the end).
In the config texts C<%%PORT_N%%> becomes C<< $t->port(N) >> and
C<%%PREFIX%%> the prefix directory (no trailing slash).
Configurations are written for current nginx: on an older C<NGINX_BIN> the written file
gets the older spelling where nginx deprecated one (C<http2 on;> becomes C<listen ... http2>
before 1.25.1; see F<t/lib/NginxCompat.pm>).
Dies if nginx does not start (see C<try_start>).

=item C<< $t->port($n) >>, C<< $t->prefix >>, C<< $t->conf_text >>

=item C<< $t->start >>, C<< $t->try_start >>

Start nginx and wait until the pid file exists, every port accepts and all
workers run. C<start> dies on failure, C<try_start> returns false and leaves
the reason in C<< $t->startup_error >>. If a port was taken in the meantime by
someone else, new ports are picked (at first start only) and it retries.

=item C<< $t->test_config >>

Runs C<nginx -t> on the written config; returns C<($ok, $output)>. Its log
goes to C<logs/config-test.log>, which the error-log check does not read.

=item C<< $t->stop(graceful => 0|1, timeout => 10) >>

C<nginx -s stop> (or C<-s quit>), waits for the master to exit. Returns true
if it exited in time (else kills it and records a problem).

=item C<< $t->restart >>

stop, then start with the same ports and prefix (the error log accumulates).

=item C<< $t->reload(conf => $new_http_text, timeout => 15, wait_old => 1) >>

Optionally rewrites the config, runs C<nginx -s reload>, then waits until the
set of workers is complete and disjoint from the old one, and (unless
C<< wait_old => 0 >>) every old worker process has exited. Returns true on
success, false on timeout or if the reload logged an C<[emerg]>.

=item C<< $t->master_pid >>, C<< $t->worker_pids >>, C<< $t->all_worker_pids >>

C<worker_pids>: live workers (not the old ones that are shutting down), sorted.
C<all_worker_pids> includes old workers still shutting down.

=item C<< $t->error_log >>, C<< $t->log_mark >>, C<< $t->log_since($mark) >>

The error log's content; a position in it; the content after a position.

=item C<< $t->wait_for_log(qr/.../, timeout => 5, since => $mark) >>

Waits until a line matching the pattern appears; returns the line or undef.

=item C<< $t->skip_log_check >>, C<< $t->allow_log(qr/.../) >>, C<< $t->finish >>

=back

=head2 HTTP

=over

=item C<< $t->http($method, $path, %opt) >>

One request on a new connection (C<Connection: close>) unless C<< client => $c >>.
Options: C<headers> (hashref, or arrayref of name/value pairs for repeated
headers; they override the defaults C<Host: localhost>, C<Connection>,
C<Content-Length>), C<body> (bytes; C<Content-Length> is sent when a body is
given, and C<0> for a bodiless POST/PUT), C<chunked> (send the body with
C<Transfer-Encoding: chunked>, in pieces of C<chunk_size> bytes), C<port>
(index, default 0), C<timeout> (seconds, default 10), C<version> (C<'1.1'>).
Returns C<< {status, reason, headers => {lowercased name => value},
header_list => [[name, value], ...], body, json, error} >> (C<json>: the decoded
body when the Content-Type is JSON, else absent); C<status> is 0 and
C<error> says why when no complete response came. Content-Length, chunked
and read-until-close bodies are handled; HEAD/204/304 have none.

=item C<< my $c = $t->client(port => $n) >>

A keep-alive connection: C<< $c->request($method, $path, %opt) >> (same
options and answer as C<http>), C<< $c->send_raw($bytes) >>,
C<< $c->read_response(method => 'GET', timeout => 10) >>, C<< $c->closed >>
(peer closed), C<< $c->close >>.

=item C<< $t->raw_request($bytes, port => $n, timeout => 10) >>

Sends the bytes as they are on a new connection and reads one response.

=item C<< my $p = $t->request_start($method, $path, %opt) >>

Sends a request and returns at once; C<< $p->response(timeout => 10) >> reads
the answer later (e.g. start a long-poll, then publish).

=item C<< $t->poll($path, cursor => $id, cursor_in => 'header'|'arg', timeout => 35, %opt) >>

A long-poll request: the cursor goes in C<Last-Event-ID> (default) or in the
C<last_event_id> query argument. Returns the C<http> answer plus C<json>
(decoded body when it is JSON, else undef) and C<elapsed> (seconds).
C<< $t->poll_start(...) >> returns a pending object: C<< $p->result(timeout => s) >>.

=item C<< $t->stats($path, port => $n, query => 'format=prometheus') >>

GET and decode JSON; undef (and a diag) if not a 200 JSON answer.
C<< $t->zone_stats($path, $zone_name, port => $n) >> returns that zone's hash.

=item C<< $t->publish($channel, $data, location => 'pub', port => 1, headers => {...}, query => '...', client => $c, timeout => 10) >>

POST to C</LOCATION/CHANNEL> (on the publish port, 1, by default); returns the new id and
dies (with status and body) unless the answer is C<201> with JSON. With C<client> it goes
over that keep-alive connection.
C<< $t->publish_request(...) >> (same arguments, and any other option of C<http>, e.g.
C<chunked>) sends the same request and returns its C<http> answer whatever the status,
for tests that expect a refusal or count failures.
C<< $t->subscribers($channel, location => 'pub', port => 1) >> is the channel's
C<subscribers> count from a C<GET> there, 0 when the channel does not exist;
C<< $t->wait_subscribers($channel, $n, timeout => 5, location => 'pub', port => 1) >> waits
until it is C<$n> (true) or the timeout passes (undef).

=item C<< $t->wait_for(sub { ... }, timeout => 5, interval => 0.02) >>

Calls the sub until it returns true (returned) or the deadline passes (undef).

=back

=head2 SSE

=over

=item C<< my $s = $t->sse_open($path, headers => {...}, port => $n, timeout => 10, rcvbuf => $bytes, version => '1.1', method => 'GET') >>

Connects, sends a GET with C<Accept: text/event-stream> and reads the response
header. C<< $s->status >>, C<< $s->headers >> (hashref, lowercased names),
C<< $s->header($name) >>. For a non-200 answer (or a C<HEAD>) the body is read whole:
C<< $s->body >>. C<rcvbuf> sets C<SO_RCVBUF> before connecting, so it also bounds the
window the client advertises (a client that reads slowly or not at all).

=item C<< $s->next_event(timeout => 5) >>

The next event (a block ending in a blank line with at least one field, so a
C<retry:>-only block counts) as
C<< {id, event, data, retry, comments => [...], fields => [[name, value], ...], raw} >>
(C<data> lines joined with "\n", undef if no data line; C<id>/C<event>/C<retry>
undef when absent; C<raw>: the block's bytes), or undef on timeout or end of stream.
Parsed the WHATWG way by L<ChannelsTest::SseParser>: CRLF, CR and LF line ends, one
leading space stripped from values, lines starting with ":" are comments, an C<id>
holding a NUL is ignored. Comments (e.g. pings) met since the previous event are in
C<comments>. C<< $s->next_block(timeout => 5) >> returns any block, comment-only ones
(pings, with C<ping> set) included.

=item C<< $s->eof >>, C<< $s->clean_end >>, C<< $s->timed_out >>, C<< $s->wait_eof(timeout => 5) >>

C<eof>: the stream ended (connection closed or last chunk read). C<clean_end>: it
ended with the chunked terminator (or Content-Length reached). C<timed_out>: the
last C<next_*> call ran out of time. C<wait_eof> discards events until the end;
true if it ended in time.

=item C<< $s->raw >>, C<< $s->last_id >>, C<< $s->retry >>, C<< $s->comments >>, C<< $s->close >>, C<< $s->socket >>

All decoded body bytes so far (exact wire framing; C<sse_open> streams only); the last C<id:> and C<retry:>
values seen by C<next_event>/C<next_block>; every comment line so far; close the
connection; the underlying socket.

=item C<< $s->events_for(timeout => 1) >>, C<< $s->events_until($until, timeout => 5) >>

C<events_for>: every event arriving within the time (or until the end of the stream), as
a list. C<events_until>: the events up to the first one C<$until> matches (a string: its
C<data> is that; a code ref: it returns true for the event), that one included, or those
that came before the timeout or the end of the stream.

=item C<< my $s = $t->sse_start($path, headers => {...}, port => $n, rcvbuf => $bytes) >>

Many streams read at once (fan-out, reloads, slow consumers): connects and sends the
request, and returns without reading. C<< $s->read >> takes what the socket holds without
waiting: the response header once it is whole (then C<< $s->started >> is true and
C<status>/C<headers> are set), then the events; those with data are appended to
C<< $s->received >> (an array ref the test may empty) as C<{id, event, data, retry}>.
Raw bytes are not kept. C<read> dies on a body that is not valid chunked framing.
C<eof>, C<clean_end>, C<last_id>, C<socket> and C<close> are as above.

=item C<< ChannelsTest::SSE::pump(\@streams, sub { ... }, $timeout) >>

Reads the streams as bytes come until the sub returns true (then true) or the timeout
passes (false). C<< ChannelsTest::SSE::read_ready(\@streams, $wait) >> is one step of
it: waits at most C<$wait> seconds for one of the streams to have bytes, reads those that
do, and returns them (for a loop of one's own, e.g. one that reconnects ended streams).

=back

=head2 Functions

C<id_parse($id)> gives C<(ms, counter)> or an empty list if the id is not of the
form README.md gives for message ids (section "Publishing"); C<id_cmp($a, $b)> compares
two ids (-1, 0, 1). Both exportable, as are C<json_decode($bytes)> (undef if not JSON),
C<slurp($file)> (its bytes; '' if it cannot be read) and C<publish_server()> (the text of
a server on port 1 with C</pub/CHANNEL>, C</stats> and C</pid>, for tests that stop the
worker holding a subscriber and still publish and read the statistics; with it,
C<< $t->client_of_other_worker($pid) >> gives a keep-alive connection to port 1 that a worker
other than C<$pid> accepted, or undef).

=head2 Files

This file is the harness (nginx's life, logs, requests); the rest lives beside it in
F<t/lib/ChannelsTest/>: F<Conn.pm> (a connection: requests out, HTTP/1.x answers in),
F<Pending.pm> (an answer read later), F<Chunked.pm> (chunked bodies), F<SSE.pm> (SSE
subscribers) and F<SseParser.pm> (the one text/event-stream parser of the suite, also
used by F<t/lib/CurlStream.pm> and the model test). C<use ChannelsTest> loads them all.

=cut

use strict;
use warnings;

use Test::More ();
use Test2::API ();
use IO::Socket::INET;
use File::Temp ();
use File::Path ();
use File::Spec;
use Cwd ();
use File::Basename ();
use Time::HiRes ();
use POSIX ();
use Scalar::Util ();
use Config;
use Exporter 'import';
use NginxCompat ();
use ChannelsTest::Conn;
use ChannelsTest::Pending;
use ChannelsTest::SSE;

our @EXPORT_OK = qw(id_parse id_cmp json_decode slurp publish_server);

$SIG{PIPE} = 'IGNORE';

my $REPO = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/../..');
my $DEFAULT_MODULE = "$REPO/build/ngx_http_channels_module.so";

my @LOG_BAD = (
    qr/\[(?:alert|emerg|crit)\]/,
    qr/\[warn\] .*\bis deprecated\b/,      # a config not written for the nginx it runs on
    qr/AddressSanitizer/,
    qr/LeakSanitizer/,
    qr/runtime error:/,
    qr/ThreadSanitizer|MemorySanitizer|UndefinedBehaviorSanitizer/,
);

my %LIVE;          # refaddr => weakened object
my $HOOKED;

sub _hook_testing_done {
    return if $HOOKED++;
    Test2::API::test2_add_callback_testing_done(sub {
        for my $t (grep { defined } values %LIVE) {
            $t->finish;
        }
    });
}

END {
    # The test died or never reached done_testing: still stop every nginx.
    for my $t (grep { defined } values %LIVE) {
        next unless $t->{creator} == $$;
        my $keep = $?;
        $t->finish(silent => Test2::API::test2_is_testing_done());
        $? = $keep;
    }
}

for my $sig (qw(INT TERM HUP)) {
    next if defined $SIG{$sig} && $SIG{$sig} ne '' && $SIG{$sig} ne 'DEFAULT';
    $SIG{$sig} = sub { die "caught SIG$sig\n" };
}

# ---------------------------------------------------------------- construction

sub new {
    my ($class, %o) = @_;
    my $self = bless {
        workers            => $o{workers} // 1,
        conf_template      => $o{conf} // '',
        main_conf          => $o{main_conf} // '',
        events_conf        => $o{events_conf} // '',
        worker_connections => $o{worker_connections} // 4096,
        want_ports         => $o{ports} // 0,
        module             => $o{module} // 1,
        module_path        => $ENV{CHANNELS_MODULE} || $DEFAULT_MODULE,
        nginx              => $ENV{NGINX_BIN} || '/usr/sbin/nginx',
        finish_mode        => $o{finish} // 'quit',
        creator            => $$,
        allowed            => [],
        problems           => [],
        ports              => [],
        running            => 0,
        started_once       => 0,
    }, $class;

    if ($self->{module} && !-f $self->{module_path}) {
        die "ChannelsTest: module not found at $self->{module_path} (run `make` in $REPO "
          . "or set CHANNELS_MODULE)\n";
    }

    $self->{prefix} = File::Temp::tempdir('channels-test-XXXXXX', TMPDIR => 1, CLEANUP => 0);
    chmod 0755, $self->{prefix};   # workers run as nobody and need the temp paths
    for my $d (qw(conf logs)) {
        mkdir "$self->{prefix}/$d" or die "mkdir $d: $!";
    }
    Test::More::diag("nginx prefix: $self->{prefix}") if $ENV{CHANNELS_TEST_VERBOSE};

    $LIVE{Scalar::Util::refaddr($self)} = $self;
    Scalar::Util::weaken($LIVE{Scalar::Util::refaddr($self)});
    _hook_testing_done();

    $self->_allocate_ports;
    $self->_write_conf;
    $self->start if $o{start} // 1;
    return $self;
}

sub prefix    { $_[0]{prefix} }
sub port      { my ($self, $n) = @_; $n //= 0;
                die "ChannelsTest: no port $n allocated\n" unless defined $self->{ports}[$n];
                $self->{ports}[$n] }
sub conf_text { my $self = shift; slurp("$self->{prefix}/conf/nginx.conf") }
sub master_pid { $_[0]{running} ? $_[0]{master} : undef }

sub _ports_needed {
    my $self = shift;
    my $n = $self->{want_ports};
    for my $text ($self->{conf_template}, $self->{main_conf}, $self->{events_conf}) {
        while ($text =~ /%%PORT_(\d+)%%/g) {
            $n = $1 + 1 if $1 + 1 > $n;
        }
    }
    return $n;
}

sub _allocate_ports {
    my $self = shift;
    my $n = $self->_ports_needed;
    my (@socks, @ports);
    for (1 .. $n) {
        my $s = IO::Socket::INET->new(
            LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp', Listen => 1,
        ) or die "ChannelsTest: cannot allocate a port: $!\n";
        push @socks, $s;
        push @ports, $s->sockport;
    }
    close $_ for @socks;
    $self->{ports} = \@ports;
}

sub _subst {
    my ($self, $text) = @_;
    $text =~ s/%%PORT_(\d+)%%/$self->port($1)/ge;
    $text =~ s/%%PREFIX%%/$self->{prefix}/g;
    return $text;
}

sub _write_conf {
    my $self = shift;
    my $p = $self->{prefix};
    my $load = $self->{module} ? "load_module $self->{module_path};\n" : '';
    my $main = $self->_subst($self->{main_conf});
    my $events = $self->_subst($self->{events_conf});
    my $http = $self->_subst($self->{conf_template});
    my $nofile = $self->{worker_connections} * 2 + 64;
    my $text = <<"EOF";
# written by t/lib/ChannelsTest.pm
${load}worker_processes $self->{workers};
daemon off;
master_process on;
error_log logs/error.log info;
pid logs/nginx.pid;
worker_rlimit_nofile $nofile;
$main
events {
    worker_connections $self->{worker_connections};
$events
}

http {
    access_log logs/access.log;
    client_body_temp_path $p/client_body_temp;
    proxy_temp_path $p/proxy_temp;
    fastcgi_temp_path $p/fastcgi_temp;
    uwsgi_temp_path $p/uwsgi_temp;
    scgi_temp_path $p/scgi_temp;

$http
}
EOF
    $text = NginxCompat::conf_for_version($text, NginxCompat::nginx_version($self->{nginx}));
    _spew("$p/conf/nginx.conf", $text);
}

sub _nginx_args {
    my $self = shift;
    return ($self->{nginx}, '-p', "$self->{prefix}/", '-c', 'conf/nginx.conf', '-e', @_ ? shift : 'logs/error.log');
}

# Runs a command to completion with output captured; returns (exit status, output).
sub _run {
    my ($self, @cmd) = @_;
    my $out = "$self->{prefix}/logs/cmd.out";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $out;
        open STDERR, '>&', \*STDOUT;
        exec @cmd or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    my $rc = $?;
    return ($rc, slurp($out));
}

sub test_config {
    my $self = shift;
    my ($rc, $out) = $self->_run($self->_nginx_args('logs/config-test.log'), '-t');
    return ($rc == 0, $out);
}

# ---------------------------------------------------------------- start / stop

sub start {
    my $self = shift;
    $self->try_start or die "ChannelsTest: nginx did not start: $self->{startup_error}\n";
    return $self;
}

sub startup_error { $_[0]{startup_error} }

sub try_start {
    my $self = shift;
    return 1 if $self->{running};
    my $log = "$self->{prefix}/logs/error.log";
    my $err = "$self->{prefix}/logs/stderr.log";
    for my $attempt (1 .. 4) {
        my $log_off = -s $log // 0;
        my $err_off = -s $err // 0;
        unlink "$self->{prefix}/logs/nginx.pid";
        my $ok = $self->_spawn_and_wait;
        return 1 if $ok;
        my $why = $self->{startup_error};
        my $new = substr(slurp($log), $log_off) . substr(slurp($err), $err_off);
        $self->{startup_error} = "$why\n$new";
        last if $self->{started_once} || $new !~ /Address already in use/;
        # Someone took one of our ports between allocation and bind: new ports, forget the noise.
        truncate $log, $log_off if -e $log;
        truncate $err, $err_off if -e $err;
        $self->_allocate_ports;
        $self->_write_conf;
    }
    return 0;
}

sub _spawn_and_wait {
    my $self = shift;
    my $p = $self->{prefix};
    my @cmd = $self->_nginx_args;
    my $parent = $$;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        # If the test process dies without cleaning up, the master gets SIGTERM.
        if ($^O eq 'linux' && $Config{archname} =~ /^x86_64/) {
            syscall(157, 1, POSIX::SIGTERM());    # prctl(PR_SET_PDEATHSIG, SIGTERM)
        }
        POSIX::_exit(0) if getppid() != $parent;
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$p/logs/stderr.log";
        open STDERR, '>&', \*STDOUT;
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP PIPE);
        exec @cmd or POSIX::_exit(127);
    }
    $self->{master} = $pid;
    $self->{running} = 1;

    my $deadline = Time::HiRes::time() + 20;
    my $stage = 'pid file';
    while (Time::HiRes::time() < $deadline) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            $self->{running} = 0;
            $self->{startup_error} = "nginx exited with status " . ($? >> 8) . " (signal " . ($? & 127) . ")";
            return 0;
        }
        if ($stage eq 'pid file') {
            my $pf = slurp("$p/logs/nginx.pid");
            $stage = 'ports' if $pf =~ /^(\d+)/ && $1 == $pid;
        }
        if ($stage eq 'ports') {
            $stage = 'workers' if !grep { !_can_connect($_) } @{ $self->{ports} };
        }
        if ($stage eq 'workers') {
            my @w = $self->worker_pids;
            if (@w >= $self->{workers}) {
                $self->{started_once} = 1;
                return 1;
            }
        }
        Time::HiRes::sleep(0.01);
    }
    $self->{startup_error} = "timed out waiting for $stage";
    $self->_kill_master;
    return 0;
}

sub _can_connect {
    my $port = shift;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

sub _kill_master {
    my $self = shift;
    return unless $self->{running};
    my @w = $self->all_worker_pids;
    kill 'KILL', $self->{master}, @w;
    waitpid $self->{master}, 0;
    $self->{running} = 0;
}

sub stop {
    my ($self, %o) = @_;
    return 1 unless $self->{running};
    return 1 unless $self->{creator} == $$;
    my $timeout = $o{timeout} // 10;
    my $signal = $o{graceful} ? 'quit' : 'stop';
    my $pid = $self->{master};
    my @workers = $self->all_worker_pids;

    my ($rc, $out) = $self->_run($self->_nginx_args, '-s', $signal);
    if ($rc != 0) {
        $self->_problem("nginx -s $signal failed ($out); signalling the master directly");
        kill($signal eq 'quit' ? 'QUIT' : 'TERM', $pid);
    }
    my $exited = $self->_wait_exit($pid, $timeout);
    if (!$exited && $signal eq 'quit') {
        $self->_problem("nginx did not finish a graceful shutdown (-s quit) within ${timeout}s: "
            . "connections or timers left in workers " . join(',', $self->all_worker_pids));
        kill 'TERM', $pid;
        $exited = $self->_wait_exit($pid, 10);
    }
    if (!$exited) {
        $self->_problem("nginx did not exit within the deadline after -s $signal; killed");
        $self->_kill_master;
    }
    # Workers are the master's children: gone once it exits, unless something is very wrong.
    my @left = grep { _alive($_) } @workers;
    if (@left) {
        $self->_problem("worker processes @left outlived the master");
        kill 'KILL', @left;
    }
    $self->{running} = 0;
    return $exited;
}

sub _wait_exit {
    my ($self, $pid, $timeout) = @_;
    my $deadline = Time::HiRes::time() + $timeout;
    while (Time::HiRes::time() < $deadline) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        if ($r == $pid || $r == -1) {
            $self->{running} = 0;
            return 1;
        }
        Time::HiRes::sleep(0.01);
    }
    return 0;
}

sub restart {
    my ($self, %o) = @_;
    $self->stop(%o);
    return $self->start;
}

sub reload {
    my ($self, %o) = @_;
    die "ChannelsTest: reload while nginx is not running\n" unless $self->{running};
    if (defined $o{conf}) {
        $self->{conf_template} = $o{conf};
        $self->_write_conf;
    }
    my $timeout = $o{timeout} // 15;
    my $wait_old = $o{wait_old} // 1;
    my %old = map { $_ => 1 } $self->all_worker_pids;
    my $mark = $self->log_mark;

    my ($rc, $out) = $self->_run($self->_nginx_args, '-s', 'reload');
    if ($rc != 0) {
        Test::More::diag("nginx -s reload failed: $out");
        return 0;
    }
    my $ok = $self->wait_for(sub {
        return 1 if $self->log_since($mark) =~ /\[emerg\]/;
        my @now = $self->worker_pids;
        return 0 unless @now >= $self->{workers};
        return 0 if grep { $old{$_} } @now;
        return 0 if $wait_old && grep { _alive($_) } keys %old;
        return 1;
    }, timeout => $timeout);
    if ($self->log_since($mark) =~ /^(.*\[emerg\].*)$/m) {
        Test::More::diag("reload failed: $1");
        return 0;
    }
    if (!$ok) {
        my @old_left = grep { _alive($_) } keys %old;
        Test::More::diag("reload did not complete within ${timeout}s; workers now: "
            . join(',', $self->worker_pids) . "; old still alive: @old_left");
        return 0;
    }
    return 1;
}

sub _alive {
    my $pid = shift;
    my $stat = slurp("/proc/$pid/stat");
    return 0 unless length $stat;
    return $stat !~ /^\d+ \(.*\) Z /s;
}

sub _children {
    my $pid = shift;
    my $text = slurp("/proc/$pid/task/$pid/children");
    return split ' ', $text if -e "/proc/$pid/task/$pid/children";
    my @kids;
    opendir my $d, '/proc' or return;
    for my $e (readdir $d) {
        next unless $e =~ /^\d+$/;
        my $st = slurp("/proc/$e/stat");
        push @kids, $e if $st =~ /^\d+ \(.*\) \S+ (\d+) /s && $1 == $pid;
    }
    return @kids;
}

sub _cmdline {
    my $pid = shift;
    my $c = slurp("/proc/$pid/cmdline");
    $c =~ s/\0+$//;
    $c =~ tr/\0/ /;
    return $c;
}

sub worker_pids {
    my $self = shift;
    return () unless $self->{running};
    return sort { $a <=> $b } grep {
        my $c = _cmdline($_);
        $c =~ /^nginx: worker process/ && $c !~ /shutting down/ && _alive($_)
    } _children($self->{master});
}

sub all_worker_pids {
    my $self = shift;
    return () unless $self->{running};
    return sort { $a <=> $b } grep { _cmdline($_) =~ /^nginx: worker process/ } _children($self->{master});
}

# ---------------------------------------------------------------- logs

sub error_log { slurp("$_[0]{prefix}/logs/error.log") }
sub log_mark  { -s "$_[0]{prefix}/logs/error.log" // 0 }
sub log_since { my ($self, $mark) = @_; my $l = $self->error_log; length($l) > $mark ? substr($l, $mark) : '' }

sub wait_for_log {
    my ($self, $re, %o) = @_;
    my $mark = $o{since} // 0;
    my $line;
    $self->wait_for(sub {
        ($line) = grep { /$re/ } split /\n/, $self->log_since($mark);
        defined $line;
    }, timeout => $o{timeout} // 5);
    return $line;
}

sub skip_log_check { $_[0]{skip_log_check} = 1; $_[0] }
sub allow_log      { my ($self, @re) = @_; push @{ $self->{allowed} }, @re; $self }
sub _problem       { my ($self, $msg) = @_; push @{ $self->{problems} }, "harness: $msg" }

sub log_problems {
    my $self = shift;
    my @bad = @{ $self->{problems} };
    for my $f ('error.log', 'stderr.log') {
        for my $line (split /\n/, slurp("$self->{prefix}/logs/$f")) {
            next unless grep { $line =~ $_ } @LOG_BAD;
            next if grep { $line =~ $_ } @{ $self->{allowed} };
            push @bad, "$f: $line";
        }
    }
    return @bad;
}

sub finish {
    my ($self, %o) = @_;
    return if $self->{finished} || $self->{creator} != $$ || !$self->{prefix};
    $self->{finished} = 1;
    delete $LIVE{Scalar::Util::refaddr($self)};
    $self->stop(graceful => $self->{finish_mode} eq 'quit') if $self->{running};

    my $name = 'nginx error log clean (' . File::Basename::basename($self->{prefix}) . ')';
    if (!$self->{skip_log_check} && !$o{silent} && $self->{started_once}) {
        my @bad = $self->log_problems;
        my $ctx = Test2::API::context();
        my $plan = $ctx->hub->plan // '';
        if ($plan eq 'SKIP') {
            # skip_all: no test may follow the plan
        } elsif (@bad) {
            $ctx->ok(0, $name, [ map { "  $_" } (@bad > 30 ? (@bad[0 .. 29], '...') : @bad) ]);
        } elsif ($plan !~ /^\d+$/) {
            $ctx->ok(1, $name);
        }
        $ctx->release;
    }
    my $failed = !Test::More->builder->is_passing;
    if ($ENV{CHANNELS_TEST_KEEP} || $failed) {
        Test::More::diag("kept nginx prefix $self->{prefix}") if $failed;
    } else {
        File::Path::remove_tree($self->{prefix});
    }
}

sub DESTROY {
    my $self = shift;
    return if ${^GLOBAL_PHASE} eq 'DESTRUCT';
    return unless $self->{creator} == $$;
    $self->finish(silent => Test2::API::test2_is_testing_done());
}

# ---------------------------------------------------------------- waiting

sub wait_for {
    my ($self, $cond, %o) = @_;
    my $deadline = Time::HiRes::time() + ($o{timeout} // 5);
    my $interval = $o{interval} // 0.01;
    while (1) {
        my $v = $cond->();
        return $v if $v;
        return undef if Time::HiRes::time() >= $deadline;
        Time::HiRes::sleep($interval);
        $interval *= 1.5 if $interval < 0.1;
    }
}

# ---------------------------------------------------------------- HTTP

sub client {
    my ($self, %o) = @_;
    return ChannelsTest::Conn->new(port => $self->port($o{port} // 0), timeout => $o{timeout});
}

sub http {
    my ($self, $method, $path, %o) = @_;
    if (my $c = delete $o{client}) {
        return $c->request($method, $path, %o);
    }
    my $c = eval { ChannelsTest::Conn->new(port => $self->port($o{port} // 0), timeout => $o{timeout}) };
    return { status => 0, error => "connect: $@", headers => {}, header_list => [], body => '' } unless $c;
    my $r = $c->request($method, $path, %o, close => 1);
    $c->close;
    return $r;
}

sub raw_request {
    my ($self, $bytes, %o) = @_;
    my $c = ChannelsTest::Conn->new(port => $self->port($o{port} // 0), timeout => $o{timeout});
    $c->send_raw($bytes);
    my $r = $c->read_response(method => $o{method} // 'GET', timeout => $o{timeout});
    $c->close;
    return $r;
}

sub request_start {
    my ($self, $method, $path, %o) = @_;
    my $poll = delete $o{poll};
    my $c = ChannelsTest::Conn->new(port => $self->port($o{port} // 0), timeout => $o{timeout});
    $c->send_request($method, $path, %o, close => 1);
    return ChannelsTest::Pending->new($c, $method, poll => $poll);
}

sub _poll_args {
    my ($path, %o) = @_;
    my %h = ref $o{headers} eq 'HASH' ? %{ $o{headers} } : ();
    if (defined $o{cursor}) {
        if (($o{cursor_in} // 'header') eq 'arg') {
            my $enc = $o{cursor};
            $enc =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
            $path .= ($path =~ /\?/ ? '&' : '?') . "last_event_id=$enc";
        } else {
            $h{'Last-Event-ID'} = $o{cursor};
        }
    }
    my %pass = map { $_ => $o{$_} } grep { exists $o{$_} } qw(port version);
    return ($path, headers => \%h, %pass);
}

sub poll {
    my ($self, $path, %o) = @_;
    my $t0 = Time::HiRes::time();
    my $r = $self->http($o{method} // 'GET', _poll_args($path, %o), timeout => $o{timeout} // 35);
    return ChannelsTest::Pending::poll_result($r, $t0);
}

sub poll_start {
    my ($self, $path, %o) = @_;
    return $self->request_start($o{method} // 'GET', _poll_args($path, %o), poll => 1);
}

sub stats {
    my ($self, $path, %o) = @_;
    $path .= ($path =~ /\?/ ? '&' : '?') . $o{query} if defined $o{query};
    my $r = $self->http(GET => $path, port => $o{port} // 0);
    if ($r->{status} != 200) {
        Test::More::diag("stats $path: status $r->{status} " . ($r->{error} // '') . " $r->{body}");
        return undef;
    }
    my $j = json_decode($r->{body});
    Test::More::diag("stats $path: not JSON: $@ $r->{body}") unless defined $j;
    return $j;
}

sub _publish_path {
    my ($ch, %o) = @_;
    return '/' . ($o{location} // 'pub') . "/$ch" . (defined $o{query} ? "?$o{query}" : '');
}

sub publish_request {
    my ($self, $ch, $data, %o) = @_;
    my $path = _publish_path($ch, %o);
    delete @o{qw(location query)};
    return $self->http(POST => $path, %o, body => $data, port => $o{port} // 1, headers => $o{headers} // {});
}

sub publish {
    my ($self, $ch, $data, %o) = @_;
    my $r = $self->publish_request($ch, $data, %o);
    die "publish to $ch: $r->{status} " . ($r->{error} // $r->{body}) . "\n"
        unless $r->{status} == 201 && $r->{json};
    return $r->{json}{id};
}

sub subscribers {
    my ($self, $ch, %o) = @_;
    my $r = $self->http(GET => _publish_path($ch, location => $o{location}), port => $o{port} // 1);
    return $r->{status} == 200 && $r->{json} ? $r->{json}{subscribers} : 0;
}

sub wait_subscribers {
    my ($self, $ch, $n, %o) = @_;
    my %where = map { $_ => $o{$_} } grep { defined $o{$_} } qw(location port);
    return $self->wait_for(sub { $self->subscribers($ch, %where) == $n }, timeout => $o{timeout} // 5);
}

sub zone_stats {
    my ($self, $path, $zone, %o) = @_;
    my $j = $self->stats($path, %o) or return undef;
    my ($z) = grep { ($_->{name} // '') eq $zone } @{ $j->{zones} || [] };
    return $z;
}

sub sse_open {
    my ($self, $path, %o) = @_;
    my $port = $self->port(delete $o{port} // 0);
    return ChannelsTest::SSE->open(%o, port => $port, path => $path);
}

sub sse_start {
    my ($self, $path, %o) = @_;
    my $port = $self->port(delete $o{port} // 0);
    return ChannelsTest::SSE->start(%o, port => $port, path => $path);
}

# ---------------------------------------------------------------- utilities

sub id_parse {
    my $id = shift;
    return () unless defined $id && $id =~ /^(\d{1,20})-(\d{1,10})$/;
    return ($1, $2);
}

sub id_cmp {
    my ($p, $q) = @_;
    my @x = id_parse($p) or die "not an id: " . ($p // 'undef') . "\n";
    my @y = id_parse($q) or die "not an id: " . ($q // 'undef') . "\n";
    # Compare as decimal strings of equal length (ms may exceed 2^53).
    for my $i (0, 1) {
        my $l = length($x[$i]) > length($y[$i]) ? length($x[$i]) : length($y[$i]);
        my $c = sprintf('%0*s', $l, $x[$i]) cmp sprintf('%0*s', $l, $y[$i]);
        return $c if $c;
    }
    return 0;
}

sub json_decode { ChannelsTest::Conn::json_decode(@_) }

# A keep-alive connection to PORT (port => 1 by default) that a worker other than $pid
# accepted (asked with GET /pid, see publish_server()), or undef after 50 tries: requests
# on it never wait for a stopped worker, where a new connection could be queued for it.
sub client_of_other_worker {
    my ($self, $pid, %o) = @_;
    for (1 .. 50) {
        my $c = $self->client(port => $o{port} // 1);
        my $r = $self->http(GET => '/pid', client => $c);
        return $c if $r->{status} == 200 && $r->{body} ne $pid;
        $c->close;
    }
    return undef;
}

sub publish_server {
    return <<'CONF';
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.-]+)$ { publish_channel $ch; }
        location = /stats                { channel_stats; }
        location = /pid                  { return 200 $pid; }
    }
CONF
}

sub slurp {
    my $f = shift;
    open my $fh, '<:raw', $f or return '';
    local $/;
    my $c = <$fh>;
    return $c // '';
}

sub _spew {
    my ($f, $c) = @_;
    open my $fh, '>:raw', $f or die "write $f: $!";
    print $fh $c;
    close $fh or die "close $f: $!";
}

1;

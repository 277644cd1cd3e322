package RedisServer;

=head1 NAME

RedisServer - a private redis-server for one test file

=head1 SYNOPSIS

    use RedisServer;
    RedisServer->skip_all_unless_available;   # skip_all (loudly) without redis-server

    my $redis = RedisServer->new;              # free loopback port, no persistence
    my $url = $redis->url;                     # redis://127.0.0.1:PORT
    $redis->command(qw(XLEN channels:news));   # a tiny RESP client (undef on error)
    $redis->kill9;                             # SIGKILL, reaped
    $redis->start;                             # again, same port, empty
    $redis->stop;                              # SIGTERM by PID (SIGKILL after 5 s)

=head1 DESCRIPTION

Starts C<redis-server> in the foreground (forked and exec'ed, so its PID is known)
bound to 127.0.0.1 on a port found free by binding port 0, with
C<--save '' --appendonly no> and C<--dir> a fresh temporary directory, so nothing is
written anywhere else and a restart always comes back empty. The directory (with
the server's log, C<redis.log>) is removed when the object goes away, unless the
environment has C<CHANNELS_TEST_KEEP=1>. C<DEBUG> is enabled for local
connections (C<--enable-debug-command local>) so tests can make the server stall
with C<DEBUG SLEEP>.

Every wait polls with a deadline; nothing sleeps for a fixed time. The server is
stopped by its PID when the object is destroyed and at exit, never by name.

=head1 METHODS

=over

=item C<< RedisServer->binary >>

The path of C<redis-server> (env C<REDIS_SERVER>, else found in C<PATH>,
C</usr/bin>, C</usr/sbin>), or undef.

=item C<< RedisServer->skip_all_unless_available >>

Calls C<Test::More::plan(skip_all => ...)> with a message saying what to install
when there is no C<redis-server>; also prints the reason to STDERR so a skipped
file is visible even under a quiet C<prove>.

=item C<< RedisServer->new(start => 1) >>

Picks the port and the directory and (unless C<< start => 0 >>) starts the server.

=item C<< $r->start(timeout => 10) >>

Starts the server on its port and waits until it answers C<PING>. If the port was
taken by someone else before the first start, a new one is picked; a restart keeps
the port (and retries while it is still in TIME_WAIT or similar). Dies on failure.

=item C<< $r->stop(timeout => 5) >>, C<< $r->kill9 >>

Stop by PID and reap the process. C<kill9> does not let Redis do anything first.

=item C<< $r->running >>, C<< $r->pid >>, C<< $r->port >>, C<< $r->url(db => N) >>, C<< $r->dir >>

=item C<< $r->command(@args) >>

Sends one command on a new connection and returns the decoded reply: a string for
simple and bulk strings, a number for integers, an array ref for arrays, undef for
a nil reply; an error reply returns undef and leaves the text in C<< $r->error >>.
C<< $r->command_in_db($db, @args) >> runs it in another database (C<SELECT> first).
C<< $r->command_start(@args) >> sends a command and returns at once (the
connection stays open until the object goes away), e.g. for C<DEBUG SLEEP>.

=item C<< $r->host(%opt) >>

Starts one nginx "host" (a L<ChannelsTest> object) whose zone C<events> is joined to
this server, and waits until every worker's two Redis connections are up (see
C<wait_linked>). Options: C<prefix> (Redis key prefix, required: one per test
file keeps parallel runs apart), C<db> (a database number for the URL), C<workers> (default 2), C<history> (default 100),
C<http> (more text for C<http { }>, e.g. C<sse_ping 1s;>), C<wait> (0: do not wait
for the Redis connections). Port 0 serves subscribers: C</events/CH> (SSE),
C</multi?ch=a,b> (SSE, several channels), C</poll/CH> and C</pollmulti?ch=a,b>
(long-poll); port 1 is internal: C</pub/CH> and C</stats>.

=item C<< $r->wait_linked($t, since => $mark, timeout => 15) >>

Waits until the host's error log, after C<$mark> (a C<< $t->log_mark >>), says
"connected to redis" twice per worker (each worker's command and log-tail
connections). C<workers>: how many workers (default: those running now).
True on success.

=back

=cut

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use File::Temp ();
use File::Path ();
use File::Spec;
use POSIX ();
use Time::HiRes ();
use Scalar::Util ();

my %LIVE;

END {
    my $keep = $?;
    for my $r (grep { defined } values %LIVE) {
        $r->_shutdown if $r->{creator} == $$;
    }
    $? = $keep;
}

sub binary {
    return $ENV{REDIS_SERVER} if $ENV{REDIS_SERVER} && -x $ENV{REDIS_SERVER};
    for my $d (File::Spec->path, '/usr/bin', '/usr/sbin', '/usr/local/bin') {
        my $p = "$d/redis-server";
        return $p if -f $p && -x _;
    }
    return undef;
}

sub skip_all_unless_available {
    my $class = shift;
    return 1 if $class->binary;
    my $why = 'redis-server not found: these tests need it (Debian: apt-get install redis-server, '
            . 'or set REDIS_SERVER=/path/to/redis-server)';
    print STDERR "# SKIPPING: $why\n";
    require Test::More;
    Test::More::plan(skip_all => $why);
}

sub new {
    my ($class, %o) = @_;
    my $bin = $class->binary or die "RedisServer: redis-server not found\n";
    my $self = bless {
        bin => $bin, creator => $$, pid => undef, port => undef, started_once => 0,
        sockets => [],
    }, $class;
    $self->{dir} = File::Temp::tempdir('channels-redis-XXXXXX', TMPDIR => 1, CLEANUP => 0);
    $self->{port} = _free_port();
    $LIVE{ Scalar::Util::refaddr($self) } = $self;
    Scalar::Util::weaken($LIVE{ Scalar::Util::refaddr($self) });
    $self->start if $o{start} // 1;
    return $self;
}

sub pid     { $_[0]{pid} }
sub port    { $_[0]{port} }
sub dir     { $_[0]{dir} }
sub error   { $_[0]{error} }
sub running { my $self = shift; return defined $self->{pid} && kill(0, $self->{pid}) ? 1 : 0 }

sub url {
    my ($self, %o) = @_;
    my $u = "redis://127.0.0.1:$self->{port}";
    $u .= "/$o{db}" if defined $o{db};
    return $u;
}

sub _free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp', Listen => 1)
        or die "RedisServer: cannot find a free port: $!\n";
    my $p = $s->sockport;
    close $s;
    return $p;
}

sub _spawn {
    my $self = shift;
    my $log = "$self->{dir}/redis.log";
    my @cmd = ($self->{bin},
        '--port', $self->{port}, '--bind', '127.0.0.1', '--protected-mode', 'no',
        '--save', '', '--appendonly', 'no', '--dir', $self->{dir},
        '--daemonize', 'no', '--logfile', $log, '--loglevel', 'notice',
        '--enable-debug-command', 'local');
    my $pid = fork;
    die "RedisServer: fork: $!\n" unless defined $pid;
    if ($pid == 0) {
        # New process group: a Ctrl-C meant for the test does not reach Redis first.
        POSIX::setpgid(0, 0);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log;
        open STDERR, '>>', $log;
        { no warnings 'exec'; exec { $cmd[0] } @cmd; }
        POSIX::_exit(127);
    }
    $self->{pid} = $pid;
}

sub start {
    my ($self, %o) = @_;
    die "RedisServer: already running\n" if $self->running;
    my $deadline = Time::HiRes::time() + ($o{timeout} // 10);
    my $tries = 0;
    while (1) {
        $tries++;
        $self->_spawn;
        # Up when it answers PING; gone if the process exited (e.g. port in use).
        while (Time::HiRes::time() < $deadline) {
            if (waitpid($self->{pid}, POSIX::WNOHANG()) == $self->{pid}) {
                $self->{pid} = undef;
                last;
            }
            my $pong = $self->command('PING');
            if (defined $pong && $pong eq 'PONG') {
                $self->{started_once} = 1;
                return 1;
            }
            Time::HiRes::sleep(0.02);
        }
        if ($self->{pid}) {
            $self->_reap(kill => 'KILL', timeout => 2);
            die "RedisServer: redis-server on port $self->{port} did not answer in time; log:\n"
              . $self->_log_tail;
        }
        die "RedisServer: redis-server could not start on port $self->{port}; log:\n" . $self->_log_tail
            if Time::HiRes::time() >= $deadline;
        # The first start may pick another port; a restart must keep its port.
        $self->{port} = _free_port() unless $self->{started_once};
        Time::HiRes::sleep(0.05);
    }
}

sub _log_tail {
    my $self = shift;
    open my $fh, '<', "$self->{dir}/redis.log" or return "(no log)\n";
    my @l = <$fh>;
    return join '', @l > 20 ? @l[-20 .. -1] : @l;
}

sub _reap {
    my ($self, %o) = @_;
    my $pid = $self->{pid} or return 1;
    kill $o{kill}, $pid if $o{kill};
    my $deadline = Time::HiRes::time() + ($o{timeout} // 5);
    while (Time::HiRes::time() < $deadline) {
        my $w = waitpid($pid, POSIX::WNOHANG());
        if ($w == $pid || $w == -1) {
            $self->{pid} = undef;
            return 1;
        }
        Time::HiRes::sleep(0.01);
    }
    return 0;
}

sub stop {
    my ($self, %o) = @_;
    return 1 unless $self->{pid};
    return 1 if $self->_reap(kill => 'TERM', timeout => $o{timeout} // 5);
    return $self->_reap(kill => 'KILL', timeout => 5);
}

sub kill9 {
    my $self = shift;
    die "RedisServer: not running\n" unless $self->{pid};
    $self->_reap(kill => 'KILL', timeout => 5) or die "RedisServer: pid $self->{pid} survived SIGKILL\n";
    return 1;
}

sub _shutdown {
    my $self = shift;
    return if $self->{gone}++;
    close $_ for @{ $self->{sockets} };
    $self->stop;
    if ($ENV{CHANNELS_TEST_KEEP}) {
        print STDERR "# redis dir kept: $self->{dir}\n";
    } else {
        File::Path::remove_tree($self->{dir});
    }
}

sub DESTROY {
    my $self = shift;
    return unless ($self->{creator} // 0) == $$;
    $self->_shutdown;
}

# ---- a minimal RESP client ----

sub _encode {
    my @args = @_;
    my $out = '*' . scalar(@args) . "\r\n";
    for my $a (@args) {
        $a = "$a";
        utf8::encode($a) if utf8::is_utf8($a);
        $out .= '$' . length($a) . "\r\n$a\r\n";
    }
    return $out;
}

sub _connect {
    my $self = shift;
    return IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $self->{port}, Proto => 'tcp',
                                 Timeout => 2);
}

sub command_start {
    my ($self, @args) = @_;
    my $s = $self->_connect or return undef;
    $s->syswrite(_encode(@args)) or return undef;
    push @{ $self->{sockets} }, $s;
    return 1;
}

sub command_in_db {
    my ($self, $db, @args) = @_;
    return $self->command(@args, { db => $db });
}

sub command {
    my ($self, @args) = @_;
    my $opt = ref $args[-1] eq 'HASH' ? pop @args : {};
    $self->{error} = undef;
    my $s = $self->_connect or do { $self->{error} = "connect: $!"; return undef };
    my $req = _encode(@args);
    my $skip = 0;
    if (defined $opt->{db}) {
        $req = _encode('SELECT', $opt->{db}) . $req;
        $skip = 1;
    }
    if (!defined $s->syswrite($req) ) {
        $self->{error} = "write: $!";
        return undef;
    }
    my $buf = '';
    my $deadline = Time::HiRes::time() + 10;
    my $sel = IO::Select->new($s);
    while (1) {
        my $pos = 0;
        my ($done, $val, $err);
        for (0 .. $skip) {
            ($done, $val, $err) = _parse(\$buf, \$pos);
            last unless $done;
        }
        if ($done) {
            $self->{error} = $err;
            close $s;
            return $val;
        }
        my $left = $deadline - Time::HiRes::time();
        if ($left <= 0 || !$sel->can_read($left)) {
            $self->{error} = 'timeout';
            return undef;
        }
        my $n = sysread($s, $buf, 65536, length $buf);
        if (!$n) {
            $self->{error} = 'connection closed';
            return undef;
        }
    }
}

# Parses one reply at $$pos; returns (1, value, error) or () if incomplete.
sub _parse {
    my ($buf, $pos) = @_;
    my $nl = index($$buf, "\r\n", $$pos);
    return () if $nl < 0;
    my $type = substr($$buf, $$pos, 1);
    my $line = substr($$buf, $$pos + 1, $nl - $$pos - 1);
    my $next = $nl + 2;
    if ($type eq '+') { $$pos = $next; return (1, $line, undef) }
    if ($type eq '-') { $$pos = $next; return (1, undef, $line) }
    if ($type eq ':') { $$pos = $next; return (1, $line + 0, undef) }
    if ($type eq '$') {
        if ($line < 0) { $$pos = $next; return (1, undef, undef) }
        return () if length($$buf) < $next + $line + 2;
        $$pos = $next + $line + 2;
        return (1, substr($$buf, $next, $line), undef);
    }
    if ($type eq '*') {
        $$pos = $next;
        return (1, undef, undef) if $line < 0;
        my @items;
        for (1 .. $line) {
            my ($done, $v, $e) = _parse($buf, $pos);
            return () unless $done;
            push @items, $v;
        }
        return (1, \@items, undef);
    }
    return (1, undef, "unexpected reply type '$type'");
}

# ---- nginx hosts joined to this server ----

sub host {
    my ($self, %o) = @_;
    require ChannelsTest;
    my $prefix = $o{prefix} // die "RedisServer::host: prefix => is required\n";
    my $workers = $o{workers} // 2;
    my $history = $o{history} // 100;
    my $http = $o{http} // '';
    my $url = $self->url(db => $o{db});
    my $t = ChannelsTest->new(workers => $workers, conf => <<"CONF");
    channel_zone zone=events:8m history=$history ttl=1h;
    channel_redis zone=events url=$url prefix=$prefix;
    $http
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[\\w.:-]+)\$ { sse_channel \$ch; }
        location = /multi                      { sse_channel \$arg_ch; }
        location ~ ^/poll/(?<ch>[\\w.:-]+)\$   { longpoll_channel \$ch; }
        location = /pollmulti                  { longpoll_channel \$arg_ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\\w.:-]+)\$ { publish_channel \$ch; }
        location = /stats                  { channel_stats; }
    }
CONF
    if ($o{wait} // 1) {
        $self->wait_linked($t, since => 0, workers => $workers)
            or die "RedisServer::host: nginx at " . $t->prefix . " did not connect to redis; log:\n"
                 . $t->error_log;
    }
    return $t;
}

sub wait_linked {
    my ($self, $t, %o) = @_;
    my $since = $o{since} // 0;
    my $want = 2 * ($o{workers} // scalar(my @w = $t->worker_pids));
    return $t->wait_for(sub {
        my $text = $t->log_since($since);
        my $n = () = $text =~ /zone "events" connected to redis/g;
        return $n >= $want;
    }, timeout => $o{timeout} // 15);
}

1;

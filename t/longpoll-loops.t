#!/usr/bin/perl
# Long-poll loops under load (README "Publishing": ids; "Long polling"; issue 4 "Done means"): 4
# workers (reuseport, so every worker holds loops and most wake-ups cross workers), 1000 long-poll
# loops (each re-polls on its keep-alive connection with the Last-Event-ID it was answered) driven
# by 4 forked client processes with non-blocking sockets and IO::Select, while messages are
# published at a steady rate: every loop sees every message once, in order. Then, while every loop
# is between polls (none waiting: zone subscribers 0), a burst of 500 messages: each loop gets them
# in batches of at most 100 (the first one full: 100 waiting, a 64-message page at once),
# nothing lost, nothing twice.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use IO::Socket::INET;
use IO::Select;
use IO::Handle;
use POSIX ();
use Digest::MD5 ();
use ChannelsTest qw(id_cmp);

my $LOOPS    = 1000;
my $PROCS    = 4;
my $STEADY   = 200;     # messages at a steady rate ...
my $RATE     = 50;      # ... per second
my $BURST    = 500;     # then at once, while every loop is between polls
my $WORKERS  = 4;

my $t = ChannelsTest->new(workers => $WORKERS, worker_connections => 2048, conf => <<'CONF');
    channel_zone zone=loops:32m history=1000 ttl=1h;
    longpoll_timeout 10s;
    keepalive_requests 100000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport backlog=2048;
        access_log off;
        location ~ ^/poll/(?<ch>[^/]+)$    { longpoll_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        access_log off;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
        location = /stats                  { channel_stats; }
    }
CONF

my $PORT = $t->port(0);
sub zone { $t->zone_stats('/stats', 'loops', port => 1) || {} }

my $pub = $t->client(port => 1);    # keep-alive: keepalive_requests and keepalive_timeout above are ample

# ------------------------------------------------------------------ client process
# Runs loops [$first, $last]; reports "R\n" on $up when every loop has seen $STEADY messages and
# stopped polling, waits for a line on $down, resumes, and writes one result line per loop to $out.

sub client_main {
    my ($first, $last, $start, $up, $down, $out) = @_;
    my (%c, %by_fd);    # loop => state
    my $sel = IO::Select->new;
    my $err;

    my $connect = sub {
        my $l = shift;
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $PORT, Proto => 'tcp')
            or return "connect: $!";
        binmode $s;
        $s->blocking(0);
        $c{$l}{sock} = $s;
        $c{$l}{buf} = '';
        $by_fd{ fileno $s } = $l;
        $sel->add($s);
        return undef;
    };
    my $send = sub {
        my $l = shift;
        my $st = $c{$l};
        my $req = "GET /poll/loop HTTP/1.1\r\nHost: x\r\nLast-Event-ID: $st->{cursor}\r\n\r\n";
        my $off = 0;
        my $deadline = Time::HiRes::time() + 10;
        while ($off < length $req) {
            my $n = syswrite($st->{sock}, $req, length($req) - $off, $off);
            if (!defined $n) {
                return "write: $!" unless $!{EAGAIN} || $!{EINTR};
                return 'write timeout' if Time::HiRes::time() > $deadline;
                IO::Select->new($st->{sock})->can_write(1);
                next;
            }
            $off += $n;
        }
        $st->{pending} = 1;
        return undef;
    };
    my $drop = sub {
        my $l = shift;
        my $s = $c{$l}{sock} or return;
        $sel->remove($s);
        delete $by_fd{ fileno $s };
        close $s;
        $c{$l}{sock} = undef;
    };

    for my $l ($first .. $last) {
        $c{$l} = { cursor => $start, ids => [], seen => {}, answers => 0, burst => [], phase => 1,
                   reconnects => 0, bad => undef };
        $err //= $connect->($l);
        $err //= $send->($l);
    }
    my $want = $STEADY;
    my $active = $last - $first + 1;
    my $deadline = Time::HiRes::time() + 50;

    # Parses complete responses in a loop's buffer; returns 0 when the loop is done with this phase.
    my $on_readable = sub {
        my $l = shift;
        my $st = $c{$l};
        while ($st->{buf} =~ /\r\n\r\n/) {
            my $hend = $+[0];
            my $head = substr($st->{buf}, 0, $hend);
            my ($status) = $head =~ m{^HTTP/1\.\d (\d{3})};
            my ($len) = $head =~ /\r\ncontent-length: *(\d+)/i;
            my ($cur) = $head =~ /\r\nlast-event-id: *(\S+)/i;
            $len //= 0;
            return 1 if length($st->{buf}) < $hend + $len;
            my $body = substr($st->{buf}, $hend, $len);
            substr($st->{buf}, 0, $hend + $len, '');
            $st->{pending} = 0;
            $status //= 0;
            if ($status == 200) {
                my @ids = $body =~ /"id":"(\d+-\d+)"/g;
                my ($lei) = $body =~ /"last_event_id":"(\d+-\d+)"/;
                $st->{answers}++;
                push @{ $st->{burst} }, scalar @ids if $st->{phase} == 2;
                $st->{bad} //= 'empty 200 answer' unless @ids;
                $st->{bad} //= "Last-Event-ID $cur is not the last id $ids[-1]" if @ids && ($cur // '') ne $ids[-1];
                $st->{bad} //= 'last_event_id differs from the header' if ($lei // '') ne ($cur // '');
                for my $id (@ids) {
                    $st->{bad} //= "duplicate $id" if $st->{seen}{$id}++;
                    $st->{bad} //= "out of order: $id after $st->{ids}[-1]"
                        if @{ $st->{ids} } && id_cmp($id, $st->{ids}[-1]) <= 0;
                    push @{ $st->{ids} }, $id;
                }
            } elsif ($status == 204) {
                $st->{bad} //= "204 moved the cursor from $st->{cursor} to " . ($cur // 'nothing')
                    if ($cur // '') ne $st->{cursor};
            } else {
                $st->{bad} //= "status $status";
                return 0;
            }
            $st->{cursor} = $cur if defined $cur;
            if ($head =~ /\r\nconnection: *close/i) {
                $drop->($l);
                $st->{reconnects}++;
                $connect->($l) and return 0;
            }
            return 0 if @{ $st->{ids} } >= $want;
            my $e = $send->($l);
            if ($e) { $st->{bad} //= $e; return 0 }
        }
        return 1;
    };

    my $run_phase = sub {
        my %live = map { $_ => 1 } $first .. $last;
        while (%live && Time::HiRes::time() < $deadline) {
            for my $s ($sel->can_read(0.5)) {
                my $l = $by_fd{ fileno $s } // next;
                next unless $live{$l};
                my $st = $c{$l};
                my $n = sysread($s, $st->{buf}, 262144, length $st->{buf});
                next if !defined $n && ($!{EAGAIN} || $!{EINTR});
                if (!$n) {
                    # closed by the server between requests: reconnect and poll again
                    $drop->($l);
                    $st->{reconnects}++;
                    my $e = $connect->($l) // $send->($l);
                    if ($e || $st->{reconnects} > 20) { $st->{bad} //= $e // 'closed too often'; delete $live{$l} }
                    next;
                }
                delete $live{$l} unless $on_readable->($l);
            }
        }
        $c{$_}{bad} //= 'phase ' . $c{$_}{phase} . ': timed out with ' . scalar(@{ $c{$_}{ids} }) . ' messages'
            for keys %live;
    };

    $run_phase->() unless $err;
    syswrite($up, "R\n");
    my $go = <$down>;    # the parent published the burst
    $want = $STEADY + $BURST;
    $deadline = Time::HiRes::time() + 40;
    for my $l ($first .. $last) {
        my $st = $c{$l};
        $st->{phase} = 2;
        next if $st->{bad} || !$st->{sock};
        my $e = $send->($l);
        $st->{bad} //= $e if $e;
    }
    $run_phase->() unless $err;

    open my $fh, '>', $out or POSIX::_exit(3);
    for my $l ($first .. $last) {
        my $st = $c{$l};
        my $bad = $err // $st->{bad} // '';
        $bad =~ s/\s+/ /g;
        printf $fh "%d %d %s %d %d %s %s\n", $l, scalar @{ $st->{ids} },
            Digest::MD5::md5_hex(join ',', @{ $st->{ids} }), $st->{answers}, $st->{reconnects},
            join(':', @{ $st->{burst} }) || '-', $bad;
    }
    close $fh;
    POSIX::_exit(0);
}

# ------------------------------------------------------------------ the run

my @workers0 = $t->worker_pids;
my $start = $t->publish('loop', 'start', client => $pub);
my (@kids, @ups, @downs);
my $per = $LOOPS / $PROCS;
for my $k (0 .. $PROCS - 1) {
    pipe(my $up_r, my $up_w) or die "pipe: $!";
    pipe(my $down_r, my $down_w) or die "pipe: $!";
    my $out = $t->prefix . "/loops-$k.out";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $up_r; close $down_w;
        $up_w->autoflush(1);
        client_main($k * $per, ($k + 1) * $per - 1, $start, $up_w, $down_r, $out);
    }
    close $up_w; close $down_r;
    $down_w->autoflush(1);
    push @kids, { pid => $pid, out => $out };
    push @ups, $up_r;
    push @downs, $down_w;
}

my $z;
ok($t->wait_for(sub { $z = zone(); ($z->{subscribers} // 0) == $LOOPS }, timeout => 30),
   "all $LOOPS loops are waiting") or diag "subscribers: " . ($z->{subscribers} // 'none');
my @per_worker = map { $_->{subscribers} } @{ $z->{workers} || [] };
note("waiting loops per worker: @per_worker");
is(scalar(grep { $_ > 0 } @per_worker), $WORKERS, "every one of the $WORKERS workers holds loops");

# steady rate: message i at t0 + i / RATE
my @expected;
my $t0 = Time::HiRes::time();
for my $i (1 .. $STEADY) {
    my $at = $t0 + $i / $RATE;
    my $now = Time::HiRes::time();
    Time::HiRes::sleep($at - $now) if $at > $now;
    push @expected, $t->publish('loop', "steady $i", client => $pub);
}
my $pub_time = Time::HiRes::time() - $t0;
note(sprintf('%d messages published in %.2f s (%.0f/s)', $STEADY, $pub_time, $STEADY / $pub_time));

# every client process reports its loops done with the steady phase (each loop then stops polling)
my $sel = IO::Select->new(@ups);
my %ready;
my $deadline = Time::HiRes::time() + 40;
while (keys %ready < @ups && Time::HiRes::time() < $deadline) {
    for my $fh ($sel->can_read(0.5)) {
        my $line = <$fh>;
        $ready{ fileno $fh } = 1;
        $sel->remove($fh);
    }
}
is(scalar keys %ready, $PROCS, 'every client process finished the steady phase');
ok($t->wait_for(sub { (zone()->{subscribers} // -1) == 0 }, timeout => 10),
   'all loops are between polls: zone subscribers 0');

# the burst
my $tb = Time::HiRes::time();
push @expected, $t->publish('loop', "burst $_", client => $pub) for 1 .. $BURST;
note(sprintf('burst of %d published in %.2f s', $BURST, Time::HiRes::time() - $tb));
print {$_} "G\n" for @downs;

my %exited;
$deadline = Time::HiRes::time() + 45;
while (keys %exited < @kids && Time::HiRes::time() < $deadline) {
    for my $k (@kids) {
        next if $exited{ $k->{pid} };
        my $r = waitpid($k->{pid}, POSIX::WNOHANG());
        $exited{ $k->{pid} } = $? if $r == $k->{pid};
    }
    Time::HiRes::sleep(0.05) if keys %exited < @kids;
}
is(scalar keys %exited, $PROCS, 'every client process finished') or do { kill 'KILL', map { $_->{pid} } @kids; waitpid($_->{pid}, 0) for @kids };
is(scalar(grep { $_ != 0 } values %exited), 0, 'and exited 0');

# ------------------------------------------------------------------ results
my $steady_md5 = Digest::MD5::md5_hex(join ',', @expected);
my (@lines, %bad);
for my $k (@kids) {
    open my $fh, '<', $k->{out} or next;
    push @lines, <$fh>;
}
is(scalar @lines, $LOOPS, "a result for each of the $LOOPS loops");
my ($answers, $reconnects, $burst_bad) = (0, 0, 0);
my ($all_ok, $order_ok, $burst_shape_ok) = (0, 0, 0);
for my $line (@lines) {
    chomp $line;
    my ($l, $n, $md5, $ans, $rec, $burst, $why) = split / /, $line, 7;
    $answers += $ans;
    $reconnects += $rec;
    $why //= '';
    $order_ok++ if $why eq '';
    if ($n == @expected && $md5 eq $steady_md5) {
        $all_ok++;
    } else {
        $bad{$l} = "loop $l: $n messages (want " . scalar(@expected) . ") $why";
    }
    my @b = $burst eq '-' ? () : split /:/, $burst;
    my $sum = 0; $sum += $_ for @b;
    # full: 100 when a waiting request takes the burst, 64 (one page) when answered at once
    if (@b >= 5 && ($b[0] == 100 || $b[0] == 64) && !grep({ $_ > 100 || $_ < 1 } @b) && $sum == $BURST) {
        $burst_shape_ok++;
    } else {
        $bad{"b$l"} = "loop $l: burst answers [@b]";
    }
}
is($all_ok, $LOOPS, 'every loop saw every message exactly once, in publish order (same ids as the 201 answers)')
    or diag join "\n", (sort values %bad)[0 .. 9];
is($order_ok, $LOOPS, 'no loop saw a duplicate, an id out of order, a wrong Last-Event-ID or an error status');
is($burst_shape_ok, $LOOPS, "the burst of $BURST came to every loop in answers of at most 100, the first one full")
    or diag join "\n", (sort grep { /burst/ } values %bad)[0 .. 9];
note(sprintf('%d answers in all, %d reconnects', $answers, $reconnects));

my $zs = zone();
is($zs->{subscribers}, 0, 'afterwards: no subscribers');
is($zs->{published}, 1 + $STEADY + $BURST, 'published counter: every message');
is_deeply([ $t->worker_pids ], \@workers0, 'no worker died or was replaced');
unlike($t->error_log, qr/\[(?:error|crit|alert|emerg)\]/, 'no error lines in the log');

done_testing;

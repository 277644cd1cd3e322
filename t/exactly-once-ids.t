#!/usr/bin/perl
# Issue 12, finding 6: ids never go backwards (README "Publishing": ids "never go
# backwards (not across reloads, restarts or a clock set back)").
#
# The clock of the test's nginx only is moved with libfaketime (Debian package `faketime`):
# LD_PRELOAD in nginx's environment, the offset read from a file this test rewrites
# (FAKETIME_TIMESTAMP_FILE, re-read on every call). The monotonic clock nginx's timers use is
# left alone. The system clock is never touched.
#   a. the clock is set back 2 h, then a reload changes the zone's size (nginx creates the
#      zone anew): later ids are above every earlier one;
#   b. the master and all workers are killed with -9 (the last id is never saved on exit),
#      the clock is set back 2 h, nginx starts again: later ids are above every earlier one;
#   c. the same after a clean stop (the saved id) — this one is expected to hold already.
# In each, a client resuming with the newest earlier id gets the messages published after.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp);

my ($LIB) = grep { -f } map { "$_/faketime/libfaketime.so.1" } qw(/usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib);
plan skip_all => 'libfaketime not installed (Debian package faketime)' unless $LIB;
# libfaketime preloaded beside the ASan runtime hangs any program at start (even `nginx -v`).
plan skip_all => 'libfaketime cannot run beside the sanitizers\' runtime (tools/sanitize.sh)'
    if $ENV{CHANNELS_SANITIZE} || ($ENV{NGINX_BIN} // '') =~ /asan|san\b/;

sub conf {
    my $size = shift;
    return <<"CONF";
    channel_zone zone=ids:$size history=100 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[\\w.-]+)\$ { sse_ping 0; sse_channel \$ch; }
        location ~ ^/poll/(?<ch>[\\w.-]+)\$   { longpoll_channel \$ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\\w.-]+)\$    { publish_channel \$ch; }
    }
CONF
}

# A ChannelsTest whose nginx runs under libfaketime with the offset in a file.
sub faked {
    # nginx clears its workers' environment but for what `env` names
    my $t = ChannelsTest->new(workers => 2, start => 0, conf => conf('1m'), main_conf => join '',
        map { "env $_;\n" } qw(LD_PRELOAD FAKETIME_TIMESTAMP_FILE FAKETIME_NO_CACHE FAKETIME_DONT_FAKE_MONOTONIC));
    set_clock($t, '+0');
    with_faketime($t, sub { $t->start });
    return $t;
}

sub set_clock {
    my ($t, $offset) = @_;
    open my $fh, '>', $t->prefix . '/faketime.rc' or die "faketime.rc: $!";
    print $fh "$offset\n";
    close $fh;
}

sub with_faketime {
    my ($t, $code) = @_;
    local $ENV{LD_PRELOAD} = $LIB;
    local $ENV{FAKETIME_TIMESTAMP_FILE} = $t->prefix . '/faketime.rc';
    local $ENV{FAKETIME_NO_CACHE} = 1;
    local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = 1;
    return $code->();
}

sub ms_of { (split /-/, shift)[0] }

# Publishes after the clock went back; checks the ids and a resuming client.
sub check_after {
    my ($t, $newest, $why) = @_;
    my @ids = map { $t->publish('ids', "after $why $_") } 1 .. 3;
    cmp_ok(id_cmp($ids[0], $newest), '>', 0, "$why: the next id $ids[0] is above the newest earlier one $newest");
    ok(id_cmp($ids[1], $ids[0]) > 0 && id_cmp($ids[2], $ids[1]) > 0, "$why: and ids keep increasing");
    my $r = $t->poll('/poll/ids', cursor => $newest, timeout => 5);
    my @got = map { $_->{data} } @{ ($r->{json} || {})->{messages} || [] };
    is_deeply(\@got, [ map { "after $why $_" } 1 .. 3 ],
              "$why: a client resuming from $newest gets the messages published after it")
        or diag("long-poll answered $r->{status}" . ($r->{status} ? "" : " (it was still waiting: nothing after the cursor)"));
    my $s = $t->sse_open('/events/ids', headers => { 'Last-Event-ID' => $newest });
    # The zone is new: whatever the old one held after the cursor is gone, so a channel-gap
    # comes first (README "SSE": told, not silently skipped).
    my $ev = $s->next_event(timeout => 3);
    is($ev && $ev->{event}, 'channel-gap', "$why: an SSE client is told the old zone's messages are gone");
    $ev = $s->next_event(timeout => 3);
    is($ev && $ev->{data}, "after $why 1", "$why: then gets the messages published after its cursor");
    $s->close;
}

subtest 'a. zone re-created by a size change on reload, clock set back' => sub {
    my $t = faked();
    my @before = map { $t->publish('ids', "before $_") } 1 .. 3;
    set_clock($t, '-2h');
    my $same = $t->publish('ids', 'same zone, clock back');
    cmp_ok(id_cmp($same, $before[-1]), '>', 0, "same zone: $same is above $before[-1] (kept by the zone)");
    ok(with_faketime($t, sub { $t->reload(conf => conf('2m')) }), 'reloaded with the zone at 2m');
    check_after($t, $same, 'new zone');
    $t->finish;
};

subtest 'b. master killed with -9, restarted with the clock set back' => sub {
    my $t = faked();
    $t->allow_log(qr/exited on signal 9/);
    my @before = map { $t->publish('ids', "before $_") } 1 .. 3;
    note('killing master ' . $t->master_pid . ' and workers ' . join(',', $t->all_worker_pids));
    $t->_kill_master;   # SIGKILL to the master and every worker, by pid; reaps the master
    set_clock($t, '-2h');
    with_faketime($t, sub { $t->start });
    my $clock = ms_of($t->publish('probe', 'x'));
    note("the restarted nginx's ids start at ms $clock");
    check_after($t, $before[-1], 'after kill -9');
    $t->finish;
};

subtest 'c. clean stop, restarted with the clock set back' => sub {
    my $t = faked();
    my @before = map { $t->publish('ids', "before $_") } 1 .. 3;
    $t->stop;
    set_clock($t, '-2h');
    with_faketime($t, sub { $t->start });
    check_after($t, $before[-1], 'after a clean stop');
    $t->finish;
};

done_testing;

#!/usr/bin/perl
# Issue 11, finding 6 (README "Directives": sse_channel): channel smuggling through composed values.
#
# `sse_channel private.$arg_user.$arg_topic` composes text and variables: its value is exactly
# one channel id, so `?topic=x,other.secret` (or `%2C`) is a bad id: 400 with a one-line
# reason, logged at info, and no subscription to other.secret. An argument that is exactly
# one variable (`sse_channel $arg_ch;`, a regex capture) still takes a comma-separated list,
# percent-encoded commas included.
#
# Before the fix: values were split at commas after the variables were expanded, so the
# composed value subscribed to `private.u.x` and `other.secret` (200).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;

my $t = ChannelsTest->new(workers => 1, conf => <<'CONF');
    channel_zone zone=events:1m history=10 ttl=1h;
    longpoll_timeout 1s;                    # the refused ones must not wait
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /priv      { sse_channel private.$arg_user.$arg_topic; }
        location = /privpoll  { longpoll_channel private.$arg_user.$arg_topic; }
        location = /privraw   { longpoll_channel private.$arg_user.$arg_topic format=raw; }
        location = /mixed     { sse_channel news user.$arg_user; }
        location = /list      { sse_channel $arg_ch; }
        location = /listpoll  { longpoll_channel $arg_ch; longpoll_timeout 10s; }
        location ~ ^/cap/(?<ch>[^/]+)$ { sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.:-]+)$ { publish_channel $ch; }
    }
CONF

my $mark = $t->log_mark;

sub bad_request {
    my ($label, $status, $body) = @_;
    is($status, 400, "$label: 400");
    like($body // '', qr/^[^\n]+\n?$/, "$label: one-line reason") or diag "body: " . ($body // '');
}

# ---- composed values: a comma is a bad id, however it is encoded
for my $q ('user=u&topic=x,other.secret', 'user=u&topic=x%2Cother.secret', 'user=u&topic=x%2cother.secret',
           'user=u,other&topic=secret', 'user=u&topic=x,') {
    my $s = $t->sse_open("/priv?$q");
    bad_request("SSE /priv?$q", $s->status, $s->body);
    $s->close;
    my $r = $t->poll("/privpoll?$q", timeout => 6);
    bad_request("long-poll /privpoll?$q", $r->{status}, $r->{body});
    $r = $t->poll("/privraw?$q", timeout => 6);
    bad_request("raw long-poll /privraw?$q", $r->{status}, $r->{body});
}
{
    my $s = $t->sse_open('/mixed?user=a,other.secret');
    bad_request('SSE /mixed (news user.$arg_user) with a comma in the user', $s->status, $s->body);
    $s->close;
}
is($t->subscribers('other.secret'), 0, 'nobody got subscribed to other.secret');

# ---- what the smuggler wanted must not reach it: hold a stream and publish to other.secret
{
    my $s = $t->sse_open('/priv?user=u&topic=x%2Cother.secret');
    if ($s->status == 200) {
        $t->publish('other.secret', 'the secret');
        my $e = $s->next_event(timeout => 2);
        ok(!($e && ($e->{data} // '') eq 'the secret'), 'the smuggled channel delivers nothing');
    } else {
        pass('the smuggled channel delivers nothing (refused)');
    }
    $s->close;
}

# ---- the composed value itself works as one channel
{
    my $s = $t->sse_open('/priv?user=u&topic=x');
    is($s->status, 200, 'SSE /priv?user=u&topic=x: 200');
    ok($t->wait_for(sub { $t->subscribers('private.u.x') == 1 }, timeout => 5), 'subscribed to private.u.x');
    $t->publish('private.u.x', 'for u');
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{data}, 'for u', 'it receives private.u.x');
    ok($e && !defined $e->{event}, 'as a one-channel stream (no event: name)');
    $s->close;
}

# ---- a value that is exactly one variable still takes a list
for my $q ('ch=la,lb', 'ch=la%2Clb', 'ch=la%2clb') {
    my $s = $t->sse_open("/list?$q");
    is($s->status, 200, "SSE /list?$q: 200");
    ok($t->wait_for(sub { $t->subscribers('la') == 1 && $t->subscribers('lb') == 1 }, timeout => 5),
       "/list?$q subscribes to la and lb");
    $t->publish('lb', "to lb ($q)");
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{event}, 'lb', "/list?$q: a multi-channel stream (event named after the channel)");
    $s->close;
    $t->wait_for(sub { $t->subscribers('la') == 0 }, timeout => 5);
}
{
    my $s = $t->sse_open('/cap/ca,cb');
    is($s->status, 200, 'SSE /cap/ca,cb (a regex capture): 200');
    ok($t->wait_for(sub { $t->subscribers('ca') == 1 && $t->subscribers('cb') == 1 }, timeout => 5),
       'a regex capture still takes a list');
    $s->close;
    my $p = $t->poll_start('/listpoll?ch=pa%2Cpb');
    ok($t->wait_for(sub { $t->subscribers('pa') == 1 && $t->subscribers('pb') == 1 }, timeout => 5),
       'long-poll $arg_ch with %2C waits on both channels');
    $t->publish('pb', 'poll b');
    my $r = $p->result(timeout => 5);
    is($r->{json} && $r->{json}{messages}[0]{channel}, 'pb', 'and is answered from either');
}

my @above = grep { /\[(warn|error|crit|alert|emerg)\]/ } split /\n/, $t->log_since($mark);
ok(!@above, 'bad ids are logged at info, never above') or diag join "\n", @above[0 .. ($#above < 4 ? $#above : 4)];
like($t->log_since($mark), qr/\[info\].*400/, 'the 400s are logged at info');

done_testing;

#!/usr/bin/perl
# Every file in conf-examples/: `nginx -t` on the file as shipped (module path, ports and
# log paths substituted), then the file's http block running under the harness, with
# requests that show the example does what its comments promise.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Spec;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes ();
use ChannelsTest qw(json_decode id_cmp);
use NginxCompat ();

my $REPO = File::Spec->rel2abs("$FindBin::Bin/..");
my $EXAMPLES = "$REPO/conf-examples";
my $MODULE = $ENV{CHANNELS_MODULE} || "$REPO/build/ngx_http_channels_module.so";
my $NGINX = $ENV{NGINX_BIN} || '/usr/sbin/nginx';

# ---------------------------------------------------------------- loading an example

sub slurp {
    my $f = shift;
    open my $fh, '<:raw', $f or die "read $f: $!";
    local $/;
    return scalar <$fh>;
}

sub spew {
    my ($f, $c) = @_;
    open my $fh, '>:raw', $f or die "write $f: $!";
    print $fh $c;
    close $fh or die "close $f: $!";
}

# Splits an example (top-level directives and blocks start in column 0, each block ends
# with a "}" line in column 0) into what the harness takes, with every port turned into
# %%PORT_N%% (numbered by first appearance) and every listener moved to 127.0.0.1.
sub load_example {
    my $name = shift;
    my $text = slurp("$EXAMPLES/$name");
    my (%index, @ports);
    my $slot = sub {
        my $p = shift;
        $index{$p} //= do { push @ports, $p; $#ports };
        return "%%PORT_$index{$p}%%";
    };
    my $conf = $text;
    $conf =~ s/^(\s*listen\s+)(?:127\.0\.0\.1:)?(\d{2,5})\b/$1 . '127.0.0.1:' . $slot->($2)/gme;
    $conf =~ s/\b127\.0\.0\.1:(\d{2,5})\b/'127.0.0.1:' . $slot->($1)/ge;
    $conf =~ s{/var/log/nginx/}{%%PREFIX%%/logs/}g;

    my (%ex, @main, @events, @http);
    $ex{ports} = \%index;
    $ex{text} = $conf;
    my $block;
    for my $line (split /\n/, $conf) {
        next if $line =~ /^\s*(?:#.*)?$/ && !$block;
        if (!$block) {
            if ($line =~ /^(events|http) \{$/) {
                $block = $1;
            } elsif ($line =~ /^worker_processes\s+(\w+);/) {
                $ex{workers} = $1 eq 'auto' ? 2 : $1;
            } elsif ($line =~ /^(?:load_module|daemon|master_process|error_log|pid|user|worker_rlimit_nofile)\b/) {
                # the harness's own (or, for user, not wanted in a test)
            } elsif ($line =~ /^\w/) {
                push @main, $line;
            } else {
                die "$name: unexpected line outside a block: $line\n";
            }
        } elsif ($line eq '}') {
            $block = undef;
        } elsif ($block eq 'events') {
            push @events, $line unless $line =~ /^\s*worker_connections\b/;
        } else {
            push @http, $line;
        }
    }
    die "$name: unterminated $block block\n" if $block;
    die "$name: no http block\n" unless @http;
    $ex{main} = join "\n", @main;
    $ex{events} = join "\n", @events;
    $ex{http} = join "\n", @http;
    $ex{workers} //= 1;
    return \%ex;
}

# Starts nginx for an example under the harness (not yet started when start => 0).
sub harness_for {
    my ($ex, %o) = @_;
    return ChannelsTest->new(
        conf        => $ex->{http},
        main_conf   => $ex->{main},
        events_conf => $ex->{events},
        workers     => $ex->{workers},
        ports       => scalar(keys %{ $ex->{ports} }),
        start       => 0,
        %o,
    );
}

# `nginx -t` on the example file itself: only the module path, ports and log paths change.
sub full_file_test {
    my ($t, $name, $ex) = @_;
    my $text = $ex->{text};
    $text =~ s/%%PORT_(\d+)%%/$t->port($1)/ge;
    $text =~ s/%%PREFIX%%/$t->prefix/ge;
    my $n = $text =~ s/^load_module\s+\S+;/load_module $MODULE;/m;
    ok($n, "$name: has a load_module line");
    $text = NginxCompat::conf_for_version($text, NginxCompat::nginx_version($NGINX));
    my $file = $t->prefix . "/conf/example-full.conf";
    spew($file, $text);
    my $out = `'$NGINX' -p '@{[$t->prefix]}/' -c conf/example-full.conf -e logs/example-full-t.log -t 2>&1`;
    my $rc = $?;
    ok($rc == 0 && $out =~ /test is successful/, "$name: nginx -t accepts the file as shipped")
        or diag($out);
    unlike($out, qr/\[(?:warn|alert|emerg|crit)\]/, "$name: nginx -t prints no warning") or diag($out);
}

# The next event that carries data (skips a block holding only retry:).
sub next_data_event {
    my ($s, $timeout) = @_;
    while (my $ev = $s->next_event(timeout => $timeout // 5)) {
        return $ev if defined $ev->{data};
    }
    return undef;
}

sub port_of { my ($t, $ex, $p) = @_; $t->port($ex->{ports}{$p} // die "example has no port $p\n") }
sub pidx    { my ($ex, $p) = @_; $ex->{ports}{$p} // die "example has no port $p\n" }

# The common path: an SSE subscriber and a waiting long poll both get one publish.
sub publish_reaches_both {
    my ($t, $name, %o) = @_;
    my $ch = $o{channel} // 'smoke';
    my $s = $t->sse_open("$o{events}/$ch", port => $o{sub_port}, headers => $o{headers} // {});
    is($s->status, 200, "$name: SSE subscriber answered 200");
    like($s->header('content-type') // '', qr{^text/event-stream}, "$name: SSE content type");
    my $p = $t->poll_start("$o{poll}/$ch", port => $o{sub_port}, headers => $o{headers} // {});
    ok(wait_subscribers($t, $o{stats}, $o{pub_port}, 2), "$name: both subscribers counted in stats");
    my $r = $t->http(POST => "$o{publish}/$ch", body => "hello from $name", port => $o{pub_port});
    is($r->{status}, 201, "$name: publish answered 201") or diag($r->{body});
    my $j = json_decode($r->{body} // '') // {};
    is($j->{channel}, $ch, "$name: publish answer names the channel");
    my $ev = next_data_event($s);
    is($ev && $ev->{data}, "hello from $name", "$name: SSE subscriber got the message");
    is($ev && $ev->{id}, $j->{id}, "$name: SSE event id is the publish id");
    my $pr = $p->result(timeout => 10);
    is($pr->{status}, 200, "$name: long poll answered 200");
    my $m = $pr->{json} && $pr->{json}{messages} ? $pr->{json}{messages}[0] : undef;
    is($m && $m->{data}, "hello from $name", "$name: long poll got the message");
    $s->close;
    return $j;
}

sub wait_subscribers {
    my ($t, $path, $port, $n) = @_;
    return $t->wait_for(sub {
        my $j = $t->stats($path, port => $port) or return 0;
        my $sum = 0;
        $sum += $_->{subscribers} // 0 for @{ $j->{zones} || [] };
        return $sum >= $n;
    }, timeout => 5);
}

# ---------------------------------------------------------------- the examples

my @examples = sort map { (File::Spec->splitpath($_))[2] } glob "$EXAMPLES/*.conf";
my %tested;

sub example {
    my ($name, $code) = @_;
    $tested{$name} = 1;
    subtest $name => sub {
        my $ex = load_example($name);
        $code->($ex);
    };
}

example 'basic.conf' => sub {
    my $ex = shift;
    my $t = harness_for($ex);
    full_file_test($t, 'basic', $ex);
    my ($ok, $out) = $t->test_config;
    ok($ok, 'basic: harness config passes nginx -t') or diag($out);
    $t->start;
    publish_reaches_both($t, 'basic', events => '/events', poll => '/poll', publish => '/pub',
        stats => '/channels/stats', sub_port => pidx($ex, 8080), pub_port => pidx($ex, 8081));
    my $z = $t->zone_stats('/channels/stats', 'events', port => pidx($ex, 8081));
    is($z && $z->{size}, 32 * 1024 * 1024, 'basic: zone "events" of 32m in stats');
    is($z && $z->{history}, 100, 'basic: history=100');
    my $r = $t->http(POST => '/pub/news', body => 'x', port => pidx($ex, 8080));
    is($r->{status}, 404, 'basic: no publishing on the public port');
    $t->finish;
};

example 'multi-channel.conf' => sub {
    my $ex = shift;
    my $t = harness_for($ex);
    full_file_test($t, 'multi-channel', $ex);
    $t->start;
    my ($pub, $sub) = (pidx($ex, 8081), pidx($ex, 8080));
    # 12 messages on disk before anyone subscribes: /events/ops replays the last 10.
    my @disk;
    for my $i (1 .. 12) {
        my $r = $t->http(POST => '/pub/disk', body => "disk $i", port => $pub);
        push @disk, (json_decode($r->{body}) // {})->{id};
    }
    my $ops = $t->sse_open('/events/ops', port => $sub);
    is($ops->status, 200, 'multi: /events/ops (fixed channel list) answers 200');
    my (@got, $retry);
    while (@got < 10) {
        my $ev = $ops->next_event(timeout => 5) or last;
        $retry //= $ev->{retry};
        push @got, $ev if defined $ev->{data};
    }
    is_deeply([ map { $_->{data} } @got ], [ map { "disk $_" } 3 .. 12 ],
        'multi: channel_first_message -10 replays the last 10 of the channel');
    is_deeply([ map { $_->{event} } @got ], [ ('disk') x 10 ], 'multi: event type is the channel id');
    is($retry, 2000, 'multi: sse_retry 2s sent as retry: 2000');

    my $s = $t->sse_open('/events?ch=cpu,memory', port => $sub);
    is($s->status, 200, 'multi: /events?ch=cpu,memory answers 200');
    ok(wait_subscribers($t, '/channels/stats', $pub, 2), 'multi: subscribers counted');
    $t->http(POST => '/pub/cpu', body => '{"load":0.42}', port => $pub,
        headers => { 'Content-Type' => 'application/json' });
    $t->http(POST => '/pub/disk', body => 'not subscribed', port => $pub);
    $t->http(POST => '/pub/memory', body => 'low', port => $pub, headers => { 'Event-Type' => 'alert' });
    my $e1 = next_data_event($s);
    my $e2 = next_data_event($s);
    is($e1 && $e1->{event}, 'cpu', 'multi: untyped message arrives as event "cpu"');
    is($e1 && $e1->{data}, '{"load":0.42}', 'multi: cpu data');
    is($e2 && $e2->{event}, 'alert', 'multi: typed message keeps its event type');
    is($e2 && $e2->{data}, 'low', 'multi: memory data (disk skipped)');

    my $pr = $t->poll('/poll?ch=cpu,memory', cursor => $e1->{id}, cursor_in => 'arg', port => $sub, timeout => 10);
    is($pr->{status}, 200, 'multi: long poll over two channels answers at once from a cursor');
    is_deeply([ map { $_->{channel} } @{ $pr->{json}{messages} || [] } ], ['memory'],
        'multi: long poll returns what followed the cursor');
    my $bad = $t->http(GET => '/events?ch=cpu,,memory', port => $sub);
    is($bad->{status}, 400, 'multi: an empty item in ?ch= is refused');
    $t->finish;
};

example 'auth-request.conf' => sub {
    my $ex = shift;
    my $t = harness_for($ex);
    full_file_test($t, 'auth-request', $ex);
    $t->start;
    my ($sub, $pub) = (pidx($ex, 8080), pidx($ex, 8081));
    for my $path ('/events/news', '/poll/news', '/events/me', '/poll/me') {
        my $r = $t->http(GET => $path, port => $sub, timeout => 5);
        is($r->{status}, 401, "auth: $path without a session: 401");
    }
    my $r = $t->http(GET => '/events/news', port => $sub, headers => { Cookie => 'session=wrong' }, timeout => 5);
    is($r->{status}, 401, 'auth: a wrong session: 401');
    my $cookie = { Cookie => 'session=letmein' };
    publish_reaches_both($t, 'auth', events => '/events', poll => '/poll', publish => '/pub',
        stats => '/channels/stats', sub_port => $sub, pub_port => $pub, headers => $cookie);

    my $me = $t->sse_open('/events/me', port => $sub, headers => $cookie);
    is($me->status, 200, 'auth: /events/me with a session: 200');
    ok($t->wait_for(sub {
        my $j = $t->http(GET => '/pub/user.42', port => $pub);
        $j->{status} == 200 && (json_decode($j->{body}) // {})->{subscribers} == 1;
    }), 'auth: /events/me subscribed to user.42 (the id from the auth answer)');
    $t->http(POST => '/pub/user.43', body => 'for someone else', port => $pub);
    $t->http(POST => '/pub/user.42', body => 'you have mail', port => $pub);
    my $ev = next_data_event($me);
    is($ev && $ev->{data}, 'you have mail', "auth: the user's private channel, and only it");
    $t->finish;
};

example 'tls-http2.conf' => sub {
    my $ex = shift;
    my $t = harness_for($ex);
    my $certs = $t->prefix . '/conf/certs';
    mkdir $certs or die "mkdir $certs: $!";
    my $gen = `openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost -keyout '$certs/channels.key' -out '$certs/channels.crt' 2>&1`;
    is($?, 0, 'tls: self-signed certificate made with openssl') or diag($gen);
    full_file_test($t, 'tls-http2', $ex);
    $t->start;
    my ($tls, $pub) = (port_of($t, $ex, 8443), pidx($ex, 8081));
    my $dir = $t->prefix;
    # curl over HTTP/2 holds the stream; its output goes to a file we watch.
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', "$dir/h2-stream.out";
        open STDERR, '>', "$dir/h2-stream.err";
        exec 'curl', '-sS', '-N', '-k', '--http2', '--max-time', '20', '-D', "$dir/h2-stream.hdr",
            "https://127.0.0.1:$tls/events/tls" or POSIX::_exit(127);
    }
    ok(wait_subscribers($t, '/channels/stats', $pub, 1), 'tls: the HTTP/2 stream is subscribed');
    my $hdr = read_file_when("$dir/h2-stream.hdr", qr/\r?\n\r?\n/);
    like($hdr, qr{^HTTP/2 200}, 'tls: answered over HTTP/2 with 200');
    like($hdr, qr{content-type: text/event-stream}i, 'tls: event stream over HTTP/2');
    my $r = $t->http(POST => '/pub/tls', body => "secure\nline two", port => $pub);
    is($r->{status}, 201, 'tls: publish 201');
    my $out = read_file_when("$dir/h2-stream.out", qr/data: line two\n\n/);
    like($out, qr/^id: \S+\ndata: secure\ndata: line two\n\n/m, 'tls: the event arrived over HTTP/2');
    kill 'TERM', $pid;
    waitpid $pid, 0;
    # many streams on one connection: two subscribers in one curl process share a connection
    my $two = `curl -sS -k --http2 --max-time 10 -o /dev/null -w '%{http_version} %{num_connects}\\n' -I https://127.0.0.1:$tls/events/a -o /dev/null -I https://127.0.0.1:$tls/poll/a 2>&1`;
    like($two, qr/^2 1\n2 0\n/, 'tls: HEAD on both endpoints over one HTTP/2 connection') or diag($two);
    $t->finish;
};

example 'cors.conf' => sub {
    my $ex = shift;
    my $t = harness_for($ex);
    full_file_test($t, 'cors', $ex);
    $t->start;
    my ($sub, $pub) = (pidx($ex, 8080), pidx($ex, 8081));
    my $app = 'https://app.example.com';
    my $pre = $t->http(OPTIONS => '/events/news', port => $sub, headers => {
        Origin => $app, 'Access-Control-Request-Method' => 'GET',
        'Access-Control-Request-Headers' => 'last-event-id' });
    is($pre->{status}, 204, 'cors: preflight answered 204');
    is($pre->{headers}{'access-control-allow-origin'}, $app, 'cors: preflight allows the origin');
    like($pre->{headers}{'access-control-allow-headers'} // '', qr/Last-Event-ID/i, 'cors: preflight allows Last-Event-ID');
    like($pre->{headers}{'access-control-allow-methods'} // '', qr/\bGET\b/, 'cors: preflight allows GET');
    is($pre->{headers}{'access-control-allow-credentials'}, 'true', 'cors: credentials allowed');
    my $prepoll = $t->http(OPTIONS => '/poll/news', port => $sub, headers => { Origin => $app });
    is($prepoll->{status}, 204, 'cors: preflight on the long-poll location');

    my $evil = $t->http(OPTIONS => '/events/news', port => $sub, headers => { Origin => 'https://evil.example' });
    ok(!exists $evil->{headers}{'access-control-allow-origin'}, 'cors: another origin gets no Allow-Origin');

    my $s = $t->sse_open('/events/news', port => $sub, headers => { Origin => $app });
    is($s->status, 200, 'cors: SSE with an Origin header: 200');
    is($s->header('access-control-allow-origin'), $app, 'cors: SSE answer allows the origin');
    like($s->header('vary') // '', qr/Origin/, 'cors: Vary: Origin');
    my $r = $t->http(POST => '/pub/news', body => 'cross-origin', port => $pub);
    is($r->{status}, 201, 'cors: publish');
    my $ev = next_data_event($s);
    is($ev && $ev->{data}, 'cross-origin', 'cors: the cross-origin subscriber got it');
    my $p = $t->poll('/poll/news', port => $sub, headers => { Origin => 'http://localhost:3000' },
        cursor => '1-0', timeout => 10);
    is($p->{status}, 200, 'cors: long poll answered');
    is($p->{headers}{'access-control-allow-origin'}, 'http://localhost:3000', 'cors: second listed origin allowed');
    like($p->{headers}{'access-control-expose-headers'} // '', qr/Last-Event-ID/i,
        'cors: Last-Event-ID exposed to the page');
    $t->finish;
};

example 'reverse-proxy-app.conf' => sub {
    my $ex = shift;
    my $t = harness_for($ex);
    full_file_test($t, 'reverse-proxy-app', $ex);
    my ($sub, $pub, $appp) = (pidx($ex, 8080), port_of($t, $ex, 8081), port_of($t, $ex, 9000));
    my $app = start_app($appp, $pub, $t->prefix);
    $t->start;
    my $home = $t->http(GET => '/', port => $sub);
    is($home->{status}, 200, 'app: / reaches the application');
    like($home->{body}, qr/order app/, 'app: the application answered');
    my $s = $t->sse_open('/events/orders', port => $sub);
    is($s->status, 200, 'app: /events/orders is held by nginx');
    ok(wait_subscribers($t, '/channels/stats', pidx($ex, 8081), 1), 'app: subscriber counted');
    my $r = $t->http(POST => '/orders', body => '{"order":7,"state":"paid"}', port => $sub,
        headers => { 'Content-Type' => 'application/json' });
    is($r->{status}, 202, 'app: the order was accepted by the application') or diag($r->{body});
    like($r->{body}, qr/"subscribers":1/, 'app: its curl publish reached one subscriber');
    my $ev = next_data_event($s);
    is($ev && $ev->{data}, '{"order":7,"state":"paid"}', 'app: the browser-side stream got the order');
    my $info = $t->http(GET => '/pub/orders', port => pidx($ex, 8081));
    like($info->{body}, qr/"messages":1/, 'app: one message retained');
    stop_app($app);
    $t->finish;
};

example 'production.conf' => sub {
    my $ex = shift;
    my $t = harness_for($ex, worker_connections => 1024);
    full_file_test($t, 'production', $ex);
    $t->start;
    my ($sub, $pub, $edge) = (pidx($ex, 8080), pidx($ex, 8081), pidx($ex, 8000));
    my @workers = $t->worker_pids;
    is(scalar @workers, 2, 'production: worker_processes auto runs 2 workers here');
    # Through the edge proxy: events must pass at once (no buffering).
    publish_reaches_both($t, 'production via edge', events => '/events', poll => '/poll',
        publish => '/pub', stats => '/channels/stats', sub_port => $edge, pub_port => $pub,
        channel => 'edge');
    my $s = $t->sse_open('/events/edge2', port => $edge);
    my $first = $s->next_block(timeout => 5);
    is($first && $first->{retry}, 3000, 'production: retry: 3000 passes the edge');
    ok(wait_subscribers($t, '/channels/stats', $pub, 1), 'production: edge subscriber counted');
    my $t0 = Time::HiRes::time();
    $t->http(POST => '/pub/edge2', body => 'prompt', port => $pub);
    my $ev = next_data_event($s);
    is($ev && $ev->{data}, 'prompt', 'production: event through the edge');
    cmp_ok(Time::HiRes::time() - $t0, '<', 2, 'production: not held in a proxy buffer');
    my $log = $t->prefix . '/logs/channels.access.log';
    ok($t->wait_for(sub { -s $log }), 'production: access log written');
    $s->close;

    # limit_conn: 50 subscriptions per address, the 51st gets 429.
    my @held = map { $t->sse_open("/events/many$_", port => $sub) } 1 .. 50;
    is(scalar(grep { $_->status == 200 } @held), 50, 'production: 50 subscriptions from one address');
    my $over = $t->http(GET => '/events/one-too-many', port => $sub, timeout => 5);
    is($over->{status}, 429, 'production: the 51st is refused with 429');
    $_->close for @held;
    $t->finish;
};

example 'jwt.conf' => sub {
    my $ex = shift;
    my $t = harness_for($ex);
    require Jwt;
    my $keys = Jwt::make_keys($t->prefix . '/keys');
    # channel_jwt_key channels-jwks.json: beside nginx.conf, made from the application's keys.
    my %grants = (subscribe => ['user.42.*', 'news'], publish => ['user.42.outbox']);
    my %claims = (sub => '42', exp => time + 600, iss => 'https://app.example.com', aud => 'channels',
                  channels => \%grants);
    my $tok = Jwt::jose({
        jwks => [{ file => $t->prefix . '/conf/channels-jwks.json', keys => [
            { spki => $keys->{ec256_pub}, alg => 'ES256', kid => '2026-01' },
            { spki => $keys->{rsa_pub}, alg => 'RS256', kid => '2025-07' } ] }],
        tokens => {
            user42 => { alg => 'ES256', pkcs8 => $keys->{ec256}, header => { kid => '2026-01' }, claims => \%claims },
            old_key => { alg => 'RS256', pkcs8 => $keys->{rsa}, header => { kid => '2025-07' }, claims => \%claims },
            other_app => { alg => 'ES256', pkcs8 => $keys->{ec256}, claims => { %claims, iss => 'https://other.example' } },
        },
    });
    full_file_test($t, 'jwt', $ex);
    $t->start;
    my ($sub, $pub) = (pidx($ex, 8080), pidx($ex, 8081));
    my $bearer = { Authorization => "Bearer $tok->{user42}" };
    my $none = $t->http(GET => '/events/user.42.inbox', port => $sub);
    is($none->{status}, 401, 'jwt: no token: 401');
    is($none->{headers}{'www-authenticate'}, 'Bearer realm="channels"', 'jwt: WWW-Authenticate');
    my $s = $t->sse_open('/events/user.42.inbox,news', port => $sub, headers => { Cookie => "channels_jwt=$tok->{user42}" });
    is($s->status, 200, 'jwt: the cookie opens a stream of two granted channels');
    ok(wait_subscribers($t, '/channels/stats', $pub, 1), 'jwt: subscriber counted');
    is($t->http(POST => '/pub/user.42.inbox', body => 'you have mail', port => $pub)->{status}, 201,
       'jwt: the application publishes on the internal side without a token');
    my $ev = next_data_event($s);
    is($ev && $ev->{data}, 'you have mail', 'jwt: the stream got it');
    my $own = $t->http(POST => '/pub/user.42.outbox', body => 'hi', port => $sub, headers => $bearer);
    is($own->{status}, 201, 'jwt: the browser publishes where its token grants');
    my $inbox = $t->http(POST => '/pub/user.42.inbox', body => 'spoof', port => $sub, headers => $bearer);
    is($inbox->{status}, 403, 'jwt: ... and nowhere else');
    my $news = $t->http(POST => '/pub/news', body => 'x', port => $sub, headers => $bearer);
    is($news->{status}, 403, 'jwt: publishing to a channel granted for subscribing only: 403');
    is($t->http(GET => '/poll/user.43.inbox', port => $sub, headers => $bearer)->{status}, 403,
       "jwt: another user's channel: 403");
    $t->http(POST => '/pub/news', body => 'headline', port => $pub);
    is($t->http(GET => '/poll/news?last_event_id=1-0', port => $sub,
                headers => { Authorization => "Bearer $tok->{old_key}" })->{status}, 200,
       'jwt: a token signed with the older key of the JWKS (rotation)');
    my $iss = $t->http(GET => '/poll/news', port => $sub, headers => { Authorization => "Bearer $tok->{other_app}" });
    is($iss->{status}, 401, 'jwt: another issuer: 401');
    like($iss->{body}, qr/^invalid token: wrong issuer\n\z/, 'jwt: ... and why');
    $s->close;
    my $log = $t->prefix . '/logs/channels.access.log';
    ok($t->wait_for(sub { -s $log && `cat '$log'` =~ /" 403 sub=42$/m }), 'jwt: the access log names the sub');
    $t->finish;
};

example 'demo.conf' => sub {
    my $ex = shift;
    my $t = harness_for($ex);
    symlink("$REPO/www", $t->prefix . '/www') or die "symlink: $!";
    full_file_test($t, 'demo', $ex);
    $t->start;
    my ($web, $pub) = (pidx($ex, 8080), pidx($ex, 8081));
    my $page = $t->http(GET => '/', port => $web);
    is($page->{status}, 200, 'demo: / answers 200');
    like($page->{body}, qr/<title>nginx-channels demo<\/title>/, 'demo: the demo page');
    for my $js ('/channels.js', '/demo.js') {
        my $r = $t->http(GET => $js, port => $web);
        is($r->{status}, 200, "demo: $js served");
        like($r->{headers}{'content-type'} // '', qr{^application/javascript}, "demo: $js as JavaScript (ES module)");
    }
    my $css = $t->http(GET => '/demo.css', port => $web);
    like($css->{headers}{'content-type'} // '', qr{^text/css}, 'demo: demo.css as text/css');
    # publish through the public /publish/ proxy, receive on both public subscriber paths
    my $got = publish_reaches_both($t, 'demo', events => '/events', poll => '/poll', publish => '/publish',
        stats => '/status', sub_port => $web, pub_port => $web, channel => 'demo');
    like($got->{id} // '', qr/^\d+-\d+$/, 'demo: /publish/ answered with the id');
    my $typed = $t->http(POST => '/publish/demo?event=alert', body => 'typed', port => $web);
    is($typed->{status}, 201, 'demo: publish with ?event= through the proxy');
    my $after = $t->poll('/poll/demo', cursor => $got->{id}, port => $web, timeout => 10);
    my $m = ($after->{json}{messages} || [])->[0] // {};
    is_deeply([ @$m{qw(data event)} ], [ 'typed', 'alert' ], 'demo: ?event= passed through the proxy');
    my $info = $t->http(GET => '/pub/demo', port => $pub);
    is((json_decode($info->{body}) // {})->{messages}, 2, 'demo: the internal port sees both messages');
    my $get = $t->http(GET => '/publish/demo', port => $web);
    is($get->{status}, 403, 'demo: /publish/ takes POST only');
    my $st = $t->zone_stats('/status', 'demo', port => $web);
    ok($st && $st->{published} >= 2, 'demo: /status shows the zone and what was published');
    my $private = $t->http(GET => '/private/events/private.alice.inbox', port => $web);
    is($private->{status}, 401, 'demo: the private channel needs a token');
    is($t->http(GET => '/demo-jwks.json', port => $web)->{headers}{'content-type'}, 'application/json',
       "demo: the page's demo key (JSON)");
    my $prom = $t->http(GET => '/status?format=prometheus', port => $web);
    like($prom->{body}, qr/^nginx_channels_published_total\{zone="demo"\} \d+/m, 'demo: Prometheus text through /status');
    $t->finish;
};

is_deeply([ grep { !$tested{$_} } @examples ], [], 'every file in conf-examples/ is tested');

done_testing;

# ---------------------------------------------------------------- helpers

# Waits until a file's content matches, returns the content (or what there was).
sub read_file_when {
    my ($file, $re, $timeout) = @_;
    my $deadline = Time::HiRes::time() + ($timeout // 10);
    my $c = '';
    while (Time::HiRes::time() < $deadline) {
        $c = -e $file ? slurp($file) : '';
        return $c if $c =~ $re;
        Time::HiRes::sleep(0.02);
    }
    return $c;
}

# A stand-in web application: GET / answers a page, POST /orders publishes the order to
# the channel "orders" with curl (as the example's comment shows) and answers 202 with
# curl's output.
sub start_app {
    my ($port, $pub_port, $dir) = @_;
    my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 16,
        Proto => 'tcp', ReuseAddr => 1) or die "app listen on $port: $!";
    my $pid = fork // die "fork: $!";
    if ($pid) {
        close $listen;
        return $pid;
    }
    $SIG{TERM} = sub { POSIX::_exit(0) };
    alarm 120;    # never outlives the test
    while (my $c = $listen->accept) {
        my $req = '';
        while ($req !~ /\r\n\r\n/) {
            my $n = sysread($c, $req, 4096, length $req);
            last unless $n;
        }
        if ($req !~ /\r\n\r\n/) {    # a bare connect (the harness checking the port)
            close $c;
            next;
        }
        my ($head, $body) = split /\r\n\r\n/, $req, 2;
        $body //= '';
        my ($len) = $head =~ /^content-length:\s*(\d+)/mi;
        while (defined $len && length($body) < $len) {
            my $n = sysread($c, $body, $len - length $body, length $body);
            last unless $n;
        }
        my ($method, $path) = $head =~ /^(\S+) (\S+)/;
        my ($status, $out) = (404, "not found\n");
        if ($method eq 'GET' && $path eq '/') {
            ($status, $out) = (200, "<h1>order app</h1>\n");
        } elsif ($method eq 'POST' && $path eq '/orders') {
            spew("$dir/app-order.json", $body);
            $out = `curl -sf -d \@'$dir/app-order.json' -H 'Content-Type: application/json' http://127.0.0.1:$pub_port/pub/orders`;
            $status = $? == 0 ? 202 : 502;
        }
        syswrite $c, "HTTP/1.1 $status X\r\nContent-Type: text/plain\r\nContent-Length: "
            . length($out) . "\r\nConnection: close\r\n\r\n$out";
        close $c;
    }
    POSIX::_exit(0);
}

sub stop_app {
    my $pid = shift;
    kill 'TERM', $pid;
    waitpid $pid, 0;
}

package Model::Schedule;

=head1 NAME

Model::Schedule - a random schedule of publishes, subscribers and faults, from a seed

=head1 SYNOPSIS

    my $s = Model::Schedule->generate(1234);
    print $s->describe;

=head1 DESCRIPTION

Everything about a schedule follows from its seed (Perl's own C<drand48>, the same on every
platform since 5.20): the zone it runs in, its channels, its clients and the actions in
order. Running it again replays the same schedule; what the server does with it may differ
in timing, which is why the model (L<Model::Judge>) accepts every legal outcome.

Zones (see L<Model::Runner> for their configuration):

    big    32 MB, history 1000, ttl 1 h   nothing is ever lost
    hist   8 MB,  history 5               history trims
    tiny   1 MB,  history 1000            the zone evicts the oldest messages
    ttl    8 MB,  ttl 1.5 s               messages expire

A client is an SSE stream or a long-poll loop, over HTTP/1.0, HTTP/1.1 or HTTP/2 (h2c,
curl), on 1-3 of the schedule's channels, starting from a cursor (none, valid, evicted,
future, malformed) or the location's C<channel_first_message> (newest, oldest, -3); it reads
fast, slowly, or stalls when an action says so.

Actions: publish (0 B - 256 KB, text, UTF-8 or binary, typed or not, POST or PUT, awaited
or left in flight), burst (several at once), connect, stall, drop (the client closes and
resumes with its cursor), resubscribe (closes and starts over with a new cursor kind),
delete, reload, straddle (a publish whose body is finished after a reload), kill (a worker,
-9), sleep, barrier (every reading client must have everything published so far).

=cut

use strict;
use warnings;

my @EVENTS = ('update', 'tick', 'a:b', 'x-y.z', 'ev 1', 'e' x 64);
my @CTYPES = (undef, undef, 'text/plain', 'application/json', 'application/octet-stream',
              'text/html; charset=utf-8');
my @MALFORMED = ('garbage', '12-34-56', '-1', 'abc-1', '1-', '99999999999999999999999-1', '1-x', ' ');

sub pick { $_[ int rand @_ ] }
sub chance { rand() < $_[0] }

# A weighted choice: pick_w(a => 3, b => 1)
sub pick_w {
    my %w = @_;
    my @k = grep { $w{$_} > 0 } sort keys %w;
    my $sum = 0;
    $sum += $w{$_} for @k;
    my $r = rand $sum;
    for (@k) { return $_ if ($r -= $w{$_}) < 0 }
    return $k[-1];
}

sub generate {
    my ($class, $seed) = @_;
    srand($seed);
    my $s = bless { seed => $seed }, $class;
    $s->{zone} = pick_w(big => 35, hist => 20, tiny => 25, ttl => 20);
    $s->{nch} = 1 + int rand 4;
    my $nclients = 1 + int rand 5;
    $s->{clients} = [ map { $s->_client($_) } 0 .. $nclients - 1 ];
    $s->_actions;
    return $s;
}

sub _client {
    my ($s, $i) = @_;
    my $kind = chance(0.7) ? 'sse' : 'poll';
    my $proto = $kind eq 'sse' ? pick_w('1.1' => 30, '1.0' => 15, 'h2' => 25, 'curl1.1' => 15)
                               : pick_w('1.1' => 50, '1.0' => 20, 'h2' => 30);
    my $n = 1 + int rand($s->{nch} < 3 ? $s->{nch} : 3);
    my @all = (0 .. $s->{nch} - 1);
    my @chs;
    push @chs, splice(@all, int rand @all, 1) for 1 .. $n;
    my $c = {
        n        => $i,
        kind     => $kind,
        proto    => $proto,
        channels => \@chs,
        mode     => pick_w(new => 50, old => 25, last3 => 25),
        format   => ($kind eq 'poll' && chance(0.2)) ? 'raw' : 'json',
        reading  => pick_w(fast => 65, slow => 20, stall => 15),
        cursor   => pick_w(none => 35, valid => 25, evicted => 10, future => 10, malformed => 20),
        malformed => pick(@MALFORMED),
        cursor_in => chance(0.7) ? 'header' : 'arg',
    };
    # a client that ends up asking for an id of the far future gets nothing: make it rare
    $c->{future_ms} = chance(0.5) ? 300 + int rand 1200 : 5000;
    return $c;
}

sub _payload {
    my ($s, $k) = @_;
    my $r = rand;
    my $size = $r < 0.05 ? 0 : $r < 0.50 ? 1 + int rand 200 : $r < 0.80 ? 200 + int rand 16_000
             : 16_000 + int rand 246_000;
    $size = 0 if $s->{bytes} + $size > 3_000_000;   # a schedule stays quick
    $s->{bytes} += $size;
    my $kind = $size == 0 ? 'empty' : pick_w(text => 50, utf8 => 15, binary => 35);
    my $p = {
        n      => $k,
        size   => $size,
        kind   => $kind,
        salt   => int rand 1_000_000,
        event  => chance(0.3) ? pick(@EVENTS) : undef,
        ctype  => pick(@CTYPES),
        method => chance(0.8) ? 'POST' : 'PUT',
        event_in => chance(0.7) ? 'header' : 'arg',
    };
    return $p;
}

sub _actions {
    my $s = shift;
    $s->{bytes} = 0;
    my $nact = 6 + int rand 20;
    my @clients = @{ $s->{clients} };
    my %connect_at = map { $_->{n} => ($_->{n} == 0 && chance(0.6) ? 0 : int rand $nact) } @clients;
    my @acts;
    my $k = 0;
    my %connected;
    for my $i (0 .. $nact - 1) {
        for my $c (grep { $connect_at{ $_->{n} } == $i } @clients) {
            push @acts, { do => 'connect', client => $c->{n} };
            $connected{ $c->{n} } = 1;
        }
        my @live = sort { $a <=> $b } keys %connected;
        my $what = pick_w(publish => 45, burst => 10, stall => (@live ? 6 : 0), drop => (@live ? 6 : 0),
                          resubscribe => (@live ? 4 : 0), delete => 4, reload => 4, straddle => 2,
                          kill => 2, barrier => 8, sleep => 5);
        my $a = { do => $what, gap => rand() < 0.5 ? 0 : rand 0.03 };
        if ($what eq 'publish' || $what eq 'straddle') {
            $a->{ch} = int rand $s->{nch};
            $a->{msg} = $s->_payload($k++);
            $a->{wait} = $what eq 'straddle' || chance(0.7) ? 1 : 0;
        } elsif ($what eq 'burst') {
            $a->{msgs} = [ map { { ch => int rand $s->{nch}, %{ $s->_payload($k++) } } } 1 .. 2 + int rand 4 ];
        } elsif ($what eq 'stall') {
            my @st = grep { my $n = $_; grep { $_->{n} == $n && $_->{reading} eq 'stall' } @clients } @live;
            $a->{client} = @st ? pick(@st) : pick(@live);
            $a->{secs} = 0.2 + rand 1.3;
        } elsif ($what eq 'drop') {
            $a->{client} = pick(@live);
            $a->{secs} = chance(0.5) ? 0 : rand 0.5;
        } elsif ($what eq 'resubscribe') {
            $a->{client} = pick(@live);
            $a->{cursor} = pick_w(none => 30, valid => 30, evicted => 15, future => 10, malformed => 15);
        } elsif ($what eq 'delete') {
            $a->{ch} = int rand $s->{nch};
        } elsif ($what eq 'sleep') {
            $a->{secs} = $s->{zone} eq 'ttl' && chance(0.6) ? 1.6 + rand 0.4 : rand 0.3;
        }
        push @acts, $a;
    }
    $s->{actions} = \@acts;
}

# The payload bytes of a message (made at run time from its description; the first bytes
# name it, so that a message is recognised even when its publish got no answer).
sub payload {
    my ($msg, $label) = @_;
    return '' if $msg->{size} == 0;
    my $head = "$label:";
    my $need = $msg->{size} - length $head;
    return substr($head, 0, $msg->{size}) if $need <= 0;
    my $salt = $msg->{salt};
    my $block;
    if ($msg->{kind} eq 'binary') {
        # every byte value, NUL, CR and LF included, and invalid UTF-8
        $block = join '', map { chr(($_ * 37 + $salt) % 256) } 0 .. 255;
    } elsif ($msg->{kind} eq 'utf8') {
        $block = "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 line\n" . ($salt % 2 ? "crlf\r\n" : "cr\r") . "x$salt ";
    } else {
        $block = "text $salt with lines\nand more; " . ($salt % 3 == 0 ? "\r\n" : $salt % 3 == 1 ? "\r" : ' ');
    }
    my $body = $block x (1 + int($need / length $block));
    return $head . substr($body, 0, $need);
}

sub describe {
    my $s = shift;
    my @out = ("seed $s->{seed}: zone $s->{zone}, $s->{nch} channel(s)");
    for my $c (@{ $s->{clients} }) {
        push @out, sprintf('  client c%d: %s over %s on %s, %s, %s reader, first cursor %s%s', $c->{n},
            $c->{kind} eq 'sse' ? 'SSE' : "long-poll ($c->{format})", $c->{proto},
            join(',', map { "ch$_" } @{ $c->{channels} }), "first_message $c->{mode}", $c->{reading},
            $c->{cursor}, $c->{cursor} eq 'none' ? '' : " (in $c->{cursor_in})");
    }
    my $i = 0;
    for my $a (@{ $s->{actions} }) {
        push @out, '  ' . $i++ . '. ' . describe_action($a);
    }
    return join "\n", @out;
}

sub describe_msg {
    my ($m, $ch) = @_;
    return sprintf('m%d to ch%d: %d B %s%s%s', $m->{n}, $ch, $m->{size}, $m->{kind},
        $m->{event} ? " event '$m->{event}'" : '', $m->{ctype} ? " type $m->{ctype}" : '');
}

sub describe_action {
    my $a = shift;
    my $d = $a->{do};
    return "connect c$a->{client}" if $d eq 'connect';
    return 'publish ' . describe_msg($a->{msg}, $a->{ch}) . ($a->{wait} ? '' : ' (not awaited)') if $d eq 'publish';
    return 'straddle reload with ' . describe_msg($a->{msg}, $a->{ch}) if $d eq 'straddle';
    return 'burst: ' . join('; ', map { describe_msg($_, $_->{ch}) } @{ $a->{msgs} }) if $d eq 'burst';
    return sprintf('stall c%d for %.2fs', $a->{client}, $a->{secs}) if $d eq 'stall';
    return sprintf('drop c%d, resume after %.2fs', $a->{client}, $a->{secs}) if $d eq 'drop';
    return "resubscribe c$a->{client} with cursor $a->{cursor}" if $d eq 'resubscribe';
    return "delete ch$a->{ch}" if $d eq 'delete';
    return sprintf('sleep %.2fs', $a->{secs}) if $d eq 'sleep';
    return $d;
}

1;

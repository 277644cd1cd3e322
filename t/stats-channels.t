#!/usr/bin/perl
# channel_stats ?channels (README "Statistics"): channel list in bytewise id order with prefix=,
# limit= (default 100) and after= paging; next_after present only when more remain.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:2m history=100 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/pub/(?<ch>[^/]+)$ { publish_channel $ch; }
        location = /stats              { channel_stats; }
    }
CONF

sub list {
    my $q = shift;
    my $r = $t->http(GET => "/stats?channels$q");
    is($r->{status}, 200, "?channels$q: 200") or diag $r->{body};
    return $r->{json} || {};
}

is_deeply(list('')->{channels}, [], 'no channels yet: empty list');

# Ids chosen so that bytewise order differs from case-insensitive and numeric order.
my @names = qw(a1 a10 a2 B1 b1 a:x a-y a_z a.b a@c a~d Z9 0lead);
my %last;
for my $n (@names) {
    my $count = length $n;    # a different message count per channel
    for (1 .. $count) {
        my $r = $t->http(POST => "/pub/$n", body => "$n $_");
        $last{$n} = $r->{json}{id};
    }
}
my @sorted = sort @names;    # Perl's default sort is bytewise

my $j = list('');
is_deeply([map { $_->{id} } @{ $j->{channels} }], \@sorted, 'all channels, bytewise order');
ok(!exists $j->{next_after} || !defined $j->{next_after}, 'no next_after when everything fits');
my ($a10) = grep { $_->{id} eq 'a10' } @{ $j->{channels} };
is_deeply([sort keys %$a10], [qw(id last_event_id messages subscribers)], 'entry fields');
is_deeply([@$a10{qw(messages subscribers last_event_id)}], [3, 0, $last{a10}], 'entry values');
my $bad = grep { $_->{messages} != length($_->{id}) || $_->{last_event_id} ne $last{ $_->{id} } } @{ $j->{channels} };
is($bad, 0, 'every entry has its channel\'s messages and last id');

# prefix=
is_deeply([map { $_->{id} } @{ list('&prefix=a')->{channels} }], [grep { /^a/ } @sorted], 'prefix=a');
is_deeply([map { $_->{id} } @{ list('&prefix=a1')->{channels} }], [qw(a1 a10)], 'prefix=a1');
is_deeply(list('&prefix=nothing')->{channels}, [], 'prefix matching nothing: empty');
is_deeply([map { $_->{id} } @{ list('&prefix=B')->{channels} }], ['B1'], 'prefix is case-sensitive');

# after=
is_deeply([map { $_->{id} } @{ list('&after=a2')->{channels} }], [grep { $_ gt 'a2' } @sorted], 'after=a2: ids greater than it');
is_deeply([map { $_->{id} } @{ list('&after=a10')->{channels} }], [grep { $_ gt 'a10' } @sorted], 'after= an existing id excludes it');
is_deeply([map { $_->{id} } @{ list('&after=zzz')->{channels} }], [], 'after= past the end: empty');

# limit= and paging with next_after
my @paged;
my $q = '&limit=3';
my $pages = 0;
while (1) {
    my $p = list($q);
    $pages++;
    my @ids = map { $_->{id} } @{ $p->{channels} };
    ok(@ids <= 3, "page $pages has at most 3 entries");
    push @paged, @ids;
    last unless defined $p->{next_after};
    is($p->{next_after}, $ids[-1], "page $pages: next_after is its last id");
    $q = "&limit=3&after=$p->{next_after}";
    last if $pages > 10;
}
is_deeply(\@paged, \@sorted, 'pages of 3 put together give the whole list');
is($pages, int((@sorted + 2) / 3), 'number of pages');

my $p = list('&prefix=a&limit=2&after=a10');
is_deeply([map { $_->{id} } @{ $p->{channels} }], [(grep { /^a/ && $_ gt 'a10' } @sorted)[0, 1]], 'prefix, limit and after together');
is($p->{next_after}, (grep { /^a/ && $_ gt 'a10' } @sorted)[1], 'next_after with prefix');

# limit defaults to 100
for my $i (1 .. 120) {
    $t->http(POST => sprintf('/pub/p-%03d', $i), body => 'x');
}
$j = list('&prefix=p-');
is(scalar(@{ $j->{channels} }), 100, 'default limit: 100 entries');
is($j->{next_after}, 'p-100', 'next_after = the 100th id');
$j = list('&prefix=p-&after=p-100');
is_deeply([map { $_->{id} } @{ $j->{channels} }], [map { sprintf('p-%03d', $_) } 101 .. 120], 'the rest');
ok(!defined $j->{next_after}, 'no next_after on the last page');

# deleted channels leave the list
$t->http(DELETE => '/pub/a2');
ok(!grep({ $_->{id} eq 'a2' } @{ list('&prefix=a')->{channels} }), 'a deleted channel is not listed');

done_testing;

#!/usr/bin/perl
# Checks the layers ARCHITECTURE.md draws against the #include lines of src/:
#   - no include cycle between files, nor between units (a unit: the files of one concern,
#     e.g. the .h and .cpp of the delivery, or the five files of the shared-memory store);
#   - every include points down: from a unit to a unit of a lower layer (or within itself);
#   - every file of src/ belongs to a unit of the table below (a new file needs a place).
# Notes (not failures): nginx-facing code above the store interface that includes a header
# of one store implementation.
#
#   perl docs/layers.pl            # from the repository's top directory; exit 1 on a failure
use strict;
use warnings;
use File::Find ();

# layer (higher: nearer nginx's requests), unit, files (relative to src/; a trailing '*' is
# a prefix). Keep in step with ARCHITECTURE.md "Layers".
my @TABLE = (
    [90, 'directives',      'ngx_http_channels_module.cpp'],
    [85, 'process hooks',   'ngx_http_channels_process.h', 'ngx_http_channels_process.cpp'],
    [80, 'sse',             'ngx_http_channels_sse.cpp', 'ngx_http_channels_sse_stream.h',
                            'ngx_http_channels_sse_stream.cpp', 'ngx_http_channels_sse_replay.cpp',
                            'ngx_http_channels_sse_output.cpp', 'ngx_http_channels_sse_events.h'],
    [80, 'longpoll',        'ngx_http_channels_longpoll.cpp', 'ngx_http_channels_longpoll_park.h',
                            'ngx_http_channels_longpoll_park.cpp'],
    [80, 'publish',         'ngx_http_channels_publish.cpp'],
    [80, 'stats',           'ngx_http_channels_stats.cpp'],
    [75, 'jwt',             'ngx_http_channels_jwt.h', 'ngx_http_channels_jwt_module.cpp'],
    [70, 'request helpers', 'ngx_http_channels_request.h', 'ngx_http_channels_request.cpp'],
    [60, 'delivery',        'ngx_http_channels_delivery.h', 'ngx_http_channels_delivery.cpp'],
    [55, 'wake-ups',        'ngx_http_channels_wake.h', 'ngx_http_channels_wake.cpp'],
    [55, 'frames',          'ngx_http_channels_frame.h', 'ngx_http_channels_frame.cpp'],
    [50, 'redis store',     'ngx_http_channels_redis.h', 'ngx_http_channels_redis.cpp',
                            'ngx_http_channels_redis_off.cpp'],
    [45, 'configuration',   'ngx_http_channels.h'],
    [40, 'shm store',       'ngx_http_channels_shm.h', 'ngx_http_channels_shm_store.cpp',
                            'ngx_http_channels_shm_zone.cpp', 'ngx_http_channels_zone_ops.h',
                            'ngx_http_channels_zone_ops.cpp', 'ngx_http_channels_zone.h'],
    [30, 'session',         'ngx_http_channels_session.h', 'ngx_http_channels_session.cpp'],
    [30, 'fault injection', 'ngx_http_channels_fault.h', 'ngx_http_channels_fault.cpp'],
    [20, 'store interface', 'ngx_http_channels_store.h'],
    [10, 'pure',            'channels/*'],
);
my $INTERFACE = 20;            # the store interface's layer
my @ABOVE_STORES = (60, 90);   # layers that should see the stores through the interface only

my $SRC = 'src';
-d $SRC or die "run from the repository's top directory (no $SRC/)\n";

my (%unit, %layer);
for my $row (@TABLE) {
    my ($rank, $name, @files) = @$row;
    $layer{$name} = $rank;
    $unit{$_} = $name for @files;
}

sub unit_of {
    my ($file) = @_;
    return $unit{$file} if exists $unit{$file};
    for my $pattern (grep { /\*$/ } keys %unit) {
        (my $prefix = $pattern) =~ s/\*$//;
        return $unit{$pattern} if index($file, $prefix) == 0;
    }
    return undef;
}

my @files;
File::Find::find({ no_chdir => 1, wanted => sub {
    push @files, substr($File::Find::name, length($SRC) + 1) if /\.(?:h|cpp)$/;
} }, $SRC);
@files = sort @files;

# file -> files it includes (quoted includes, resolved against src/ and the file's directory)
my %includes;
for my $file (@files) {
    open my $fh, '<', "$SRC/$file" or die "$SRC/$file: $!\n";
    (my $dir = $file) =~ s{[^/]*$}{};
    for my $line (<$fh>) {
        next unless $line =~ /^\s*#\s*include\s+"([^"]+)"/;
        my $target = -f "$SRC/$1" ? $1 : -f "$SRC/$dir$1" ? "$dir$1" : undef;
        die "$SRC/$file: cannot find included \"$1\"\n" unless defined $target;
        push @{ $includes{$file} }, $target;
    }
}

my @failures;
my @notes;

# Cycles: depth-first search, reporting the first cycle found from each start.
sub find_cycle {
    my ($edges) = @_;
    my (%state, @path);   # state: 1 on the path, 2 done
    my $cycle;
    my $visit;
    $visit = sub {
        my ($n) = @_;
        $state{$n} = 1;
        push @path, $n;
        for my $m (sort keys %{ $edges->{$n} || {} }) {
            if (($state{$m} // 0) == 1) {
                my ($at) = grep { $path[$_] eq $m } 0 .. $#path;
                $cycle = [@path[$at .. $#path], $m];
                return;
            }
            $visit->($m) unless $state{$m};
            return if $cycle;
        }
        pop @path;
        $state{$n} = 2;
    };
    for my $n (sort keys %$edges) {
        $visit->($n) unless $state{$n};
        return $cycle if $cycle;
    }
    return undef;
}

my (%file_edges, %unit_edges);
for my $file (@files) {
    my $from = unit_of($file);
    push @failures, "$SRC/$file belongs to no unit of the table in $0" unless defined $from;
    for my $target (@{ $includes{$file} || [] }) {
        $file_edges{$file}{$target} = 1;
        my $to = unit_of($target);
        next unless defined $from && defined $to && $from ne $to;
        $unit_edges{$from}{$to} = 1;
        if ($layer{$to} >= $layer{$from}) {
            push @failures, "$SRC/$file ($from, layer $layer{$from}) includes $target ($to, layer $layer{$to}): not downwards";
        }
        if ($layer{$from} >= $ABOVE_STORES[0] && $layer{$from} <= $ABOVE_STORES[1] && $from ne 'directives'
            && $from ne 'process hooks' && $layer{$to} > $INTERFACE && $to =~ /store$/) {
            push @notes, "$SRC/$file ($from) includes $target: a store implementation's header";
        }
    }
}
if (my $c = find_cycle(\%file_edges)) { push @failures, 'include cycle between files: ' . join(' -> ', @$c) }
if (my $c = find_cycle(\%unit_edges)) { push @failures, 'include cycle between units: ' . join(' -> ', @$c) }

my $nunits = scalar keys %{ { map { my $u = unit_of($_); defined $u ? ($u => 1) : () } @files } };
my $nincludes = 0;
$nincludes += @{ $includes{$_} || [] } for @files;
print "note: $_\n" for @notes;
if (@failures) {
    print "FAIL: $_\n" for @failures;
    exit 1;
}
print "ok: ", scalar(@files), " files in $nunits units, $nincludes includes: no include cycle, every include points down\n";
exit 0;

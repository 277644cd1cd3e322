package NginxCompat;

=head1 NAME

NginxCompat - write nginx configurations once, for current nginx, and run them on older ones

=head1 SYNOPSIS

    use NginxCompat qw(nginx_version conf_for_version);

    my $v = nginx_version('/usr/sbin/nginx');          # '1.22.1'
    my $text = conf_for_version($conf_text, $v);

    # the command line (debian/rules, by hand):
    perl tools/conf-compat 1.22.1 < tls-http2.conf > tls-http2-1.22.conf

=head1 DESCRIPTION

The configurations of this repository (C<conf-examples/>, the tests' own) are written
for current nginx. Where a later nginx deprecated an older spelling, the older nginx
gets the older spelling from C<conf_for_version>, so neither prints a warning:

=over

=item HTTP/2 (nginx 1.25.1)

C<http2 on;> in a block (a C<server>) turns HTTP/2 on for that server; before 1.25.1
it is a C<listen> parameter (deprecated since, with a C<[warn]>). For an nginx older
than 1.25.1, each C<http2 on;> statement is removed and C<http2> is added to every
C<listen> of the same block; C<http2 off;> (the default) is removed.

=back

Comments and quoted strings are skipped when looking for statements; everything else
of the text is left exactly as it is.

=cut

use strict;
use warnings;
use Exporter 'import';

our @EXPORT_OK = qw(nginx_version version_cmp conf_for_version);

my %VERSION_OF;   # nginx binary => version

# The version an nginx binary reports (`nginx -v`), e.g. '1.31.4'; dies if it reports none.
sub nginx_version {
    my ($bin) = @_;
    return $VERSION_OF{$bin} //= do {
        my $out = `'$bin' -v 2>&1`;
        $out =~ m{nginx version: \S*?/(\d+\.\d+\.\d+)} or die "NginxCompat: no version from $bin -v: $out\n";
        $1;
    };
}

sub version_cmp {
    my ($x, $y) = @_;
    my @x = split /\./, $x;
    my @y = split /\./, $y;
    for my $i (0 .. 2) {
        my $c = ($x[$i] // 0) <=> ($y[$i] // 0);
        return $c if $c;
    }
    return 0;
}

sub conf_for_version {
    my ($text, $version) = @_;
    return $text if version_cmp($version, '1.25.1') >= 0;
    return _listen_http2($text);
}

# Statements of the text: {start, end (after the ';'), block, words}. Blocks are numbered
# in order of their '{'; 0 is the top level.
sub _statements {
    my ($text) = @_;
    my (@stmts, @stack, $start, @words, $word);
    my $blocks = 0;
    my $block = 0;
    my $i = 0;
    my $n = length $text;
    my $end_word = sub {
        push @words, $word if defined $word;
        undef $word;
    };
    while ($i < $n) {
        my $c = substr($text, $i, 1);
        if ($c eq '#') {
            $end_word->();
            my $nl = index($text, "\n", $i);
            $i = $nl < 0 ? $n : $nl;
            next;
        }
        if ($c eq '"' || $c eq "'") {
            $start //= $i;
            my $j = $i + 1;
            while ($j < $n && substr($text, $j, 1) ne $c) {
                $j += substr($text, $j, 1) eq '\\' ? 2 : 1;
            }
            $word = ($word // '') . substr($text, $i, $j + 1 - $i);
            $i = $j + 1;
            next;
        }
        if ($c =~ /\s/) {
            $end_word->();
        } elsif ($c eq ';') {
            $end_word->();
            push @stmts, { start => $start // $i, end => $i + 1, block => $block, words => [@words] };
            ($start, @words) = ();
        } elsif ($c eq '{') {
            $end_word->();
            push @stack, $block;
            $block = ++$blocks;
            ($start, @words) = ();
        } elsif ($c eq '}') {
            $end_word->();
            $block = pop(@stack) // 0;
            ($start, @words) = ();
        } else {
            $start //= $i;
            $word = ($word // '') . $c;
        }
        $i++;
    }
    return @stmts;
}

sub _listen_http2 {
    my ($text) = @_;
    my @stmts = _statements($text);
    my %on = map { $_->{block} => 1 }
        grep { @{ $_->{words} } == 2 && $_->{words}[0] eq 'http2' && $_->{words}[1] eq 'on' } @stmts;
    my @edits;   # [position, length to remove, text to insert]
    for my $s (@stmts) {
        my ($name, @args) = @{ $s->{words} };
        next unless defined $name;
        if ($name eq 'http2' && @args == 1 && $args[0] =~ /^(?:on|off)$/) {
            push @edits, _remove_statement($text, $s);
        } elsif ($name eq 'listen' && $on{ $s->{block} } && !grep { $_ eq 'http2' } @args) {
            push @edits, [$s->{end} - 1, 0, ' http2'];
        }
    }
    for my $e (sort { $b->[0] <=> $a->[0] } @edits) {
        substr($text, $e->[0], $e->[1]) = $e->[2];
    }
    return $text;
}

# A statement alone on its line goes with its line (and a comment after it); otherwise
# only the statement itself.
sub _remove_statement {
    my ($text, $s) = @_;
    my $line_start = rindex($text, "\n", $s->{start} - 1) + 1;
    my $line_end = index($text, "\n", $s->{end});
    $line_end = length $text if $line_end < 0;
    my $before = substr($text, $line_start, $s->{start} - $line_start);
    my $after = substr($text, $s->{end}, $line_end - $s->{end});
    if ($before =~ /^\s*$/ && $after =~ /^\s*(?:#.*)?$/) {
        my $len = $line_end - $line_start + ($line_end < length $text ? 1 : 0);
        return [$line_start, $len, ''];
    }
    return [$s->{start}, $s->{end} - $s->{start}, ''];
}

1;

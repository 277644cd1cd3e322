package H2;

=encoding utf8

=head1 NAME

H2 - a small HTTP/2 client over cleartext TCP, for tests that need control of flow control

=head1 SYNOPSIS

    use H2;
    my $h = H2->new(port => $t->port(2), settings => { initial_window_size => 0 });
    my $sid = $h->request(GET => '/events/news');
    my $st = $h->response($sid, timeout => 5);     # {status, headers => {name => value}}
    $h->pump(timeout => 0.5);                      # reads and handles whatever frames arrive
    my $bytes = $h->stream($sid)->{data};          # DATA received on that stream so far

=head1 DESCRIPTION

Speaks HTTP/2 with prior knowledge (RFC 9113 §3.3) to an nginx C<listen ... http2;> socket
without TLS. It exists so a test can be the client that curl and browsers never are: one
that advertises C<SETTINGS_INITIAL_WINDOW_SIZE=0> and never grants a window, one that
opens many streams on one connection and reads nothing.

Requests are encoded with HPACK literals without indexing (no Huffman, no dynamic table
on our side). Responses are decoded in full: static and dynamic table, every literal form,
table size updates, integers with prefixes, and Huffman-coded strings (the canonical code of
RFC 7541 Appendix B, rebuilt here from its code lengths).

Everything waits with deadlines on a non-blocking socket (a L<ChannelsTest::Conn>).

=head1 METHODS

=over

=item C<< H2->new(port => $p, settings => {...}, auto_window => 1, timeout => 5) >>

Connects, sends the preface and our SETTINGS (names: C<header_table_size>,
C<enable_push> (default 0), C<max_concurrent_streams>, C<initial_window_size>,
C<max_frame_size>, C<max_header_list_size>), and waits for the server's SETTINGS,
which it acknowledges. C<auto_window>: after each DATA frame, give back its size to the
connection and stream windows (a reader that reads). With C<auto_window => 0> nothing is
ever granted unless C<window_update> is called.

=item C<< $h->request($method, $path, headers => [name => value, ...], end_stream => 1) >>

Sends HEADERS on a new stream; returns its id.

=item C<< $h->pump(timeout => $s) >>

Reads what arrives within the time and handles every complete frame (SETTINGS acked,
PING answered). Returns the number of frames handled, 0 on timeout, undef once the
connection is closed.

=item C<< $h->wait(sub { ... }, timeout => $s) >>

Pumps until the sub returns true (returned) or the deadline (undef).

=item C<< $h->response($sid, timeout => $s) >>

Waits for the stream's response header block; returns C<< {status, headers} >> or undef.

=item C<< $h->stream($sid) >>

The stream's state: C<status>, C<headers> (hashref, lowercase names), C<data> (bytes),
C<ended> (END_STREAM seen), C<reset> (RST_STREAM error code, if any), C<frames>
(DATA frames received).

=item C<< $h->window_update($sid, $n) >>, C<< $h->rst_stream($sid, $code) >>, C<< $h->send_frame($type, $flags, $sid, $payload) >>

=item C<< $h->goaway >> (C<< {last_stream_id, error, debug} >> or undef), C<< $h->closed >>, C<< $h->close >>, C<< $h->socket >>, C<< $h->server_settings >>

=back

=cut

use strict;
use warnings;
use Time::HiRes ();
use ChannelsTest::Conn;

use constant {
    DATA => 0x0, HEADERS => 0x1, PRIORITY => 0x2, RST_STREAM => 0x3, SETTINGS => 0x4,
    PUSH_PROMISE => 0x5, PING => 0x6, GOAWAY => 0x7, WINDOW_UPDATE => 0x8, CONTINUATION => 0x9,
};
use constant { END_STREAM => 0x1, ACK => 0x1, END_HEADERS => 0x4, PADDED => 0x8, PRIORITY_FLAG => 0x20 };

my %SETTING_ID = (
    header_table_size => 1, enable_push => 2, max_concurrent_streams => 3,
    initial_window_size => 4, max_frame_size => 5, max_header_list_size => 6,
);
my %SETTING_NAME = reverse %SETTING_ID;

my $PREFACE = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

# ------------------------------------------------------------------ HPACK tables

# RFC 7541 Appendix A.
my @STATIC = (undef,
    [':authority', ''], [':method', 'GET'], [':method', 'POST'], [':path', '/'],
    [':path', '/index.html'], [':scheme', 'http'], [':scheme', 'https'], [':status', '200'],
    [':status', '204'], [':status', '206'], [':status', '304'], [':status', '400'],
    [':status', '404'], [':status', '500'], ['accept-charset', ''],
    ['accept-encoding', 'gzip, deflate'], ['accept-language', ''], ['accept-ranges', ''],
    ['accept', ''], ['access-control-allow-origin', ''], ['age', ''], ['allow', ''],
    ['authorization', ''], ['cache-control', ''], ['content-disposition', ''],
    ['content-encoding', ''], ['content-language', ''], ['content-length', ''],
    ['content-location', ''], ['content-range', ''], ['content-type', ''], ['cookie', ''],
    ['date', ''], ['etag', ''], ['expect', ''], ['expires', ''], ['from', ''], ['host', ''],
    ['if-match', ''], ['if-modified-since', ''], ['if-none-match', ''], ['if-range', ''],
    ['if-unmodified-since', ''], ['last-modified', ''], ['link', ''], ['location', ''],
    ['max-forwards', ''], ['proxy-authenticate', ''], ['proxy-authorization', ''],
    ['range', ''], ['referer', ''], ['refresh', ''], ['retry-after', ''], ['server', ''],
    ['set-cookie', ''], ['strict-transport-security', ''], ['transfer-encoding', ''],
    ['user-agent', ''], ['vary', ''], ['via', ''], ['www-authenticate', ''],
);

# The Huffman code of RFC 7541 Appendix B is canonical: codes of one length are consecutive
# in symbol order, and each length starts where the shorter ones ended (shifted). So the
# code lengths of symbols 0..256 (256 is EOS) determine every code.
my @HUFF_LEN = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,    #   0
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,    #  16
     6, 10, 10, 12, 13,  6,  8, 11, 10, 10,  8, 11,  8,  6,  6,  6,    #  32
     5,  5,  5,  6,  6,  6,  6,  6,  6,  6,  7,  8, 15,  6, 12, 10,    #  48
    13,  6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,    #  64
     7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  8, 13, 19, 13, 14,  6,    #  80
    15,  5,  6,  5,  6,  5,  6,  6,  6,  5,  7,  7,  6,  6,  6,  5,    #  96
     6,  7,  6,  5,  5,  6,  7,  7,  7,  7,  7, 15, 11, 14, 13, 28,    # 112
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,    # 128
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,    # 144
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,    # 160
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,    # 176
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,    # 192
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,    # 208
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,    # 224
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,    # 240
    30,                                                                # 256: EOS
);

# Decoding by (length, code): for each length, the first code and the symbols in order.
my (%HUFF_FIRST, %HUFF_SYMS, $HUFF_MAX);
{
    my @order = sort { $HUFF_LEN[$a] <=> $HUFF_LEN[$b] || $a <=> $b } 0 .. 256;
    my ($code, $len) = (0, $HUFF_LEN[$order[0]]);
    for my $sym (@order) {
        $code <<= $HUFF_LEN[$sym] - $len;
        $len = $HUFF_LEN[$sym];
        $HUFF_FIRST{$len} //= $code;
        push @{ $HUFF_SYMS{$len} }, $sym;
        $code++;
    }
    $HUFF_MAX = $len;
}

sub huffman_decode {
    my ($bytes) = @_;
    my $out = '';
    my ($code, $len) = (0, 0);
    for my $bit (split //, unpack('B*', $bytes)) {
        $code = ($code << 1) | $bit;
        $len++;
        my $first = $HUFF_FIRST{$len};
        if (defined $first && $code >= $first && $code - $first < @{ $HUFF_SYMS{$len} }) {
            my $sym = $HUFF_SYMS{$len}[$code - $first];
            die "H2: EOS inside a Huffman string\n" if $sym == 256;
            $out .= chr $sym;
            ($code, $len) = (0, 0);
        }
        die "H2: bad Huffman code\n" if $len > $HUFF_MAX;
    }
    # Padding: fewer than 8 bits, all ones (the EOS prefix).
    die "H2: bad Huffman padding\n" if $len > 7 || $code != (1 << $len) - 1;
    return $out;
}

# Encodes with the code (used by the self-test of the decoder).
sub huffman_encode {
    my ($text) = @_;
    my $bits = '';
    for my $c (map { ord } split //, $text) {
        my $len = $HUFF_LEN[$c];
        my ($i) = grep { $HUFF_SYMS{$len}[$_] == $c } 0 .. $#{ $HUFF_SYMS{$len} };
        $bits .= sprintf('%0*b', $len, $HUFF_FIRST{$len} + $i);
    }
    $bits .= '1' x ((8 - length($bits) % 8) % 8);
    return pack('B*', $bits);
}

# ------------------------------------------------------------------ HPACK integers and strings

sub hpack_int {
    my ($value, $prefix_bits, $first) = @_;
    my $max = (1 << $prefix_bits) - 1;
    return chr($first | $value) if $value < $max;
    my $out = chr($first | $max);
    $value -= $max;
    while ($value >= 128) {
        $out .= chr(($value & 0x7f) | 0x80);
        $value >>= 7;
    }
    return $out . chr($value);
}

sub _read_int {
    my ($buf, $pos, $prefix_bits) = @_;
    my $max = (1 << $prefix_bits) - 1;
    my $v = ord(substr($$buf, $$pos++, 1)) & $max;
    return $v if $v < $max;
    my $shift = 0;
    while (1) {
        die "H2: truncated HPACK integer\n" if $$pos >= length $$buf;
        my $b = ord(substr($$buf, $$pos++, 1));
        $v += ($b & 0x7f) << $shift;
        $shift += 7;
        last unless $b & 0x80;
    }
    return $v;
}

sub _read_string {
    my ($buf, $pos) = @_;
    my $huff = ord(substr($$buf, $$pos, 1)) & 0x80;
    my $len = _read_int($buf, $pos, 7);
    die "H2: truncated HPACK string\n" if $$pos + $len > length $$buf;
    my $s = substr($$buf, $$pos, $len);
    $$pos += $len;
    return $huff ? huffman_decode($s) : $s;
}

sub _literal { my $s = shift; return hpack_int(length $s, 7, 0) . $s }

# ------------------------------------------------------------------ connection

sub new {
    my ($class, %o) = @_;
    my $conn = ChannelsTest::Conn->new(host => $o{host}, port => $o{port}, timeout => $o{timeout} // 5);
    my $self = bless {
        conn => $conn, next_sid => 1, streams => {}, dyn => [], dyn_size => 0,
        dyn_max => 4096, auto_window => $o{auto_window} // 1, timeout => $o{timeout} // 5,
        server_settings => {}, settings_acked => 0, header_block => undef,
    }, $class;
    my %s = (enable_push => 0, %{ $o{settings} || {} });
    my $payload = '';
    for my $name (sort keys %s) {
        my $id = $SETTING_ID{$name} or die "H2: unknown setting $name\n";
        $payload .= pack('nN', $id, $s{$name});
    }
    $self->_send($PREFACE . _frame(SETTINGS, 0, 0, $payload));
    my $got = $self->wait(sub { $self->{server_settings_seen} }, timeout => $self->{timeout});
    die "H2: no SETTINGS from the server\n" unless $got;
    return $self;
}

sub socket          { $_[0]{conn}->socket }
sub closed          { $_[0]{conn}->closed }
sub goaway          { $_[0]{goaway} }
sub server_settings { $_[0]{server_settings} }
sub stream          { my ($self, $sid) = @_; $self->{streams}{$sid} //= _new_stream() }

sub _new_stream { { status => undef, headers => {}, data => '', ended => 0, reset => undef, frames => 0 } }

sub close { $_[0]{conn}->close }

sub _frame {
    my ($type, $flags, $sid, $payload) = @_;
    my $len = length $payload;
    return pack('nC', $len >> 8, $len & 0xff) . pack('CCN', $type, $flags, $sid & 0x7fffffff) . $payload;
}

sub _send {
    my ($self, $bytes) = @_;
    return 0 unless $self->{conn}->socket;
    return $self->{conn}->send_raw($bytes, timeout => $self->{timeout});
}

sub send_frame {
    my ($self, $type, $flags, $sid, $payload) = @_;
    return $self->_send(_frame($type, $flags, $sid, $payload // ''));
}

sub window_update {
    my ($self, $sid, $n) = @_;
    return $self->send_frame(WINDOW_UPDATE, 0, $sid, pack('N', $n));
}

sub rst_stream {
    my ($self, $sid, $code) = @_;
    return $self->send_frame(RST_STREAM, 0, $sid, pack('N', $code // 0x8));   # CANCEL
}

sub request {
    my ($self, $method, $path, %o) = @_;
    my $sid = $self->{next_sid};
    $self->{next_sid} += 2;
    my @h = (':method' => $method, ':scheme' => 'http', ':path' => $path,
             ':authority' => $o{authority} // 'localhost', @{ $o{headers} || [] });
    my $block = '';
    while (my ($n, $v) = splice(@h, 0, 2)) {
        $block .= "\x00" . _literal(lc $n) . _literal($v);   # literal without indexing, new name
    }
    my $end = ($o{end_stream} // 1) ? END_STREAM : 0;
    $self->stream($sid);
    $self->send_frame(HEADERS, END_HEADERS | $end, $sid, $block) or return undef;
    return $sid;
}

# ------------------------------------------------------------------ reading

sub pump {
    my ($self, %o) = @_;
    my $deadline = Time::HiRes::time() + ($o{timeout} // 0);
    while (1) {
        my $handled = 0;
        my $in = \$self->{conn}{buf};
        while (length $$in >= 9) {
            my ($hi, $lo, $type, $flags, $sid) = unpack('nCCCN', $$in);
            my $len = ($hi << 8) | $lo;
            last if length $$in < 9 + $len;
            my $payload = substr($$in, 9, $len);
            substr($$in, 0, 9 + $len, '');
            $self->_handle($type, $flags, $sid & 0x7fffffff, $payload);
            $handled++;
        }
        return $handled if $handled;
        return undef if $self->{conn}->closed;
        my $n = $self->{conn}->fill($deadline);
        return 0 if !defined $n;
    }
}

sub wait {
    my ($self, $cond, %o) = @_;
    my $deadline = Time::HiRes::time() + ($o{timeout} // $self->{timeout});
    while (1) {
        my $v = $cond->();
        return $v if $v;
        my $left = $deadline - Time::HiRes::time();
        return undef if $left <= 0;
        my $n = $self->pump(timeout => $left);
        return $cond->() if !defined $n;
    }
}

sub response {
    my ($self, $sid, %o) = @_;
    my $st = $self->stream($sid);
    $self->wait(sub { defined $st->{status} || defined $st->{reset} }, %o);
    return defined $st->{status} ? { status => $st->{status}, headers => $st->{headers} } : undef;
}

sub _handle {
    my ($self, $type, $flags, $sid, $payload) = @_;
    if (defined $self->{header_block} && $type != CONTINUATION) {
        die "H2: frame type $type inside a header block\n";
    }
    if ($type == SETTINGS) {
        return if $flags & ACK;
        my %s;
        for (my $i = 0; $i + 6 <= length $payload; $i += 6) {
            my ($id, $v) = unpack('nN', substr($payload, $i, 6));
            $s{ $SETTING_NAME{$id} // "id$id" } = $v;
        }
        %{ $self->{server_settings} } = (%{ $self->{server_settings} }, %s);
        $self->{server_settings_seen} = 1;
        $self->send_frame(SETTINGS, ACK, 0, '');
    } elsif ($type == PING) {
        $self->send_frame(PING, ACK, 0, $payload) unless $flags & ACK;
    } elsif ($type == GOAWAY) {
        my ($last, $err) = unpack('NN', $payload);
        $self->{goaway} = { last_stream_id => $last & 0x7fffffff, error => $err,
                            debug => substr($payload, 8) };
    } elsif ($type == RST_STREAM) {
        $self->stream($sid)->{reset} = unpack('N', $payload);
    } elsif ($type == WINDOW_UPDATE) {
        # We send no request bodies: nothing waits for a window.
    } elsif ($type == DATA) {
        my $st = $self->stream($sid);
        my $body = $payload;
        if ($flags & PADDED) {
            my $pad = ord $body;
            $body = substr($body, 1, length($body) - 1 - $pad);
        }
        $st->{data} .= $body;
        $st->{frames}++;
        $st->{ended} = 1 if $flags & END_STREAM;
        if ($self->{auto_window} && length $payload) {
            $self->window_update(0, length $payload);
            $self->window_update($sid, length $payload) unless $st->{ended};
        }
    } elsif ($type == HEADERS || $type == PUSH_PROMISE) {
        my $block = $payload;
        if ($flags & PADDED) {
            my $pad = ord $block;
            $block = substr($block, 1, length($block) - 1 - $pad);
        }
        $block = substr($block, 5) if $type == HEADERS && $flags & PRIORITY_FLAG;
        $block = substr($block, 4) if $type == PUSH_PROMISE;
        $self->{header_block} = { sid => $sid, bytes => $block, end_stream => $flags & END_STREAM };
        $self->_end_headers if $flags & END_HEADERS;
    } elsif ($type == CONTINUATION) {
        die "H2: CONTINUATION without HEADERS\n" unless $self->{header_block};
        $self->{header_block}{bytes} .= $payload;
        $self->_end_headers if $flags & END_HEADERS;
    }
}

sub _end_headers {
    my $self = shift;
    my $hb = delete $self->{header_block};
    my $st = $self->stream($hb->{sid});
    for my $pair ($self->_decode_block($hb->{bytes})) {
        my ($n, $v) = @$pair;
        if ($n eq ':status') {
            $st->{status} = $v + 0;
        } else {
            $st->{headers}{$n} = exists $st->{headers}{$n} ? "$st->{headers}{$n}, $v" : $v;
        }
    }
    $st->{ended} = 1 if $hb->{end_stream};
}

sub _entry {
    my ($self, $index) = @_;
    return $STATIC[$index] if $index >= 1 && $index < @STATIC;
    my $e = $self->{dyn}[$index - @STATIC];
    die "H2: HPACK index $index out of range\n" unless $e;
    return $e;
}

sub _dyn_add {
    my ($self, $n, $v) = @_;
    unshift @{ $self->{dyn} }, [$n, $v];
    $self->{dyn_size} += 32 + length($n) + length($v);
    $self->_dyn_evict;
}

sub _dyn_evict {
    my $self = shift;
    while ($self->{dyn_size} > $self->{dyn_max} && @{ $self->{dyn} }) {
        my $e = pop @{ $self->{dyn} };
        $self->{dyn_size} -= 32 + length($e->[0]) + length($e->[1]);
    }
}

sub _decode_block {
    my ($self, $buf) = @_;
    my $pos = 0;
    my @out;
    while ($pos < length $buf) {
        my $b = ord substr($buf, $pos, 1);
        if ($b & 0x80) {                                   # indexed
            my $e = $self->_entry(_read_int(\$buf, \$pos, 7));
            push @out, [@$e];
        } elsif (($b & 0xe0) == 0x20) {                    # dynamic table size update
            $self->{dyn_max} = _read_int(\$buf, \$pos, 5);
            $self->_dyn_evict;
        } else {
            my $indexing = ($b & 0xc0) == 0x40;            # else without / never indexed
            my $index = _read_int(\$buf, \$pos, $indexing ? 6 : 4);
            my $name = $index ? $self->_entry($index)->[0] : _read_string(\$buf, \$pos);
            my $value = _read_string(\$buf, \$pos);
            $self->_dyn_add($name, $value) if $indexing;
            push @out, [$name, $value];
        }
    }
    return @out;
}

1;

package ChannelsTest::Pending;

=head1 NAME

ChannelsTest::Pending - a request sent whose answer is read later

=head1 DESCRIPTION

Returned by C<< $t->request_start >> and C<< $t->poll_start >> of L<ChannelsTest>
(documented there): C<< $p->response(timeout => 35) >> (C<result> is the same), C<ready>
(non-blocking: true once an answer or EOF has arrived), C<conn>, C<close>.

C<ChannelsTest::Pending::poll_result($answer, $t0)> adds what a long-poll answer carries in
the harness: C<elapsed> (seconds since C<$t0>) and C<json> (the decoded body when it is
JSON, else undef).

=cut

use strict;
use warnings;
use IO::Select;
use Time::HiRes ();
use ChannelsTest::Conn;

sub new {
    my ($class, $c, $method, %o) = @_;
    return bless { conn => $c, method => $method, t0 => Time::HiRes::time(), poll => $o{poll} }, $class;
}

sub conn  { $_[0]{conn} }
sub close { $_[0]{conn}->close }

sub response {
    my ($self, %o) = @_;
    return $self->{response} if $self->{response};
    my $r = $self->{conn}->read_response(method => $self->{method}, timeout => $o{timeout} // 35);
    $self->{conn}->close;
    poll_result($r, $self->{t0}) if $self->{poll};
    return $self->{response} = $r;
}

sub result { shift->response(@_) }

sub ready {
    my $self = shift;
    return 1 if $self->{response} || length $self->{conn}{buf} || $self->{conn}{eof};
    return IO::Select->new($self->{conn}->socket)->can_read(0) ? 1 : 0;
}

sub poll_result {
    my ($r, $t0) = @_;
    $r->{elapsed} = Time::HiRes::time() - $t0;
    $r->{json} = undef;
    if ($r->{status} && length $r->{body} && ($r->{headers}{'content-type'} // '') =~ /json/) {
        $r->{json} = ChannelsTest::Conn::json_decode($r->{body});
    }
    return $r;
}

1;

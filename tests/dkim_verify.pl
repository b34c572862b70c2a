#!/usr/bin/perl
# A DKIM oracle independent of mailgate: verifies every DKIM-Signature of the message on
# stdin with Mail::DKIM::Verifier, fetching keys from the DNS server at 127.0.0.1:PORT.
# Prints one line per signature: "<result> <domain> <selector> <algorithm>[ <detail>]".
# Usage: perl tests/dkim_verify.pl PORT < message
use strict;
use warnings;

use Mail::DKIM::DNS;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my $port = shift @ARGV;
die "usage: $0 DNS_PORT < message\n" unless defined $port && $port =~ /^\d+$/;

my $resolver = Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'],
    port        => $port,
    recurse     => 1,
    retry       => 1,
    udp_timeout => 3,
    tcp_timeout => 3,
    searchlist  => [],
    defnames    => 0,
    dnsrch      => 0,
);
Mail::DKIM::DNS::resolver($resolver);
$Mail::DKIM::DNS::TIMEOUT = 5;

binmode STDIN;
binmode STDOUT;
my $verifier = Mail::DKIM::Verifier->new();
while ( my $line = <STDIN> ) {
    $line =~ s/\r?\n\z/\015\012/;    # Mail::DKIM wants CRLF line endings
    $verifier->PRINT($line);
}
$verifier->CLOSE();

for my $signature ( $verifier->signatures ) {
    next if $signature->isa('Mail::DKIM::DkSignature');    # DomainKeys, not DKIM
    my @fields = map { defined $_ && length $_ ? $_ : '-' }
      ( $signature->result, $signature->domain, $signature->selector,
        $signature->algorithm );
    my $detail = $signature->result_detail // '';
    # result_detail repeats the result ("fail (body has been altered)"): keep the reason
    $detail =~ s/^\Q$fields[0]\E\s*//;
    $detail =~ s/^\((.*)\)\z/$1/s;
    $detail =~ s/\s+/ /g;
    print join( ' ', @fields, length $detail ? $detail : () ), "\n";
}

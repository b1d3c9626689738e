package join

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"slices"
	"strings"

	v1 "hangar/api/v1"
)

// maxCSRIPs bounds the addresses a host certificate may name.
const maxCSRIPs = 16

func csrErr(format string, args ...any) error {
	return &v1.Error{Code: v1.CodeInvalidArgument, Field: "csr", Message: "csr: " + fmt.Sprintf(format, args...)}
}

// CheckHostCSR checks a joiner's certificate request before the CA signs
// it: one PEM block, a valid signature, an ECDSA P-256/P-384 key, common
// name = the host's name, DNS names only that name and localhost, no
// e-mail or URI names, and IP addresses that include listenIP, none
// unspecified or multicast. It returns the request and the IP addresses
// and extra DNS names to put in the certificate.
func CheckHostCSR(csrPEM, host string, listenIP net.IP) (*x509.CertificateRequest, []net.IP, []string, error) {
	blk, rest := pem.Decode([]byte(csrPEM))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, nil, nil, csrErr("want one PEM CERTIFICATE REQUEST block")
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, nil, nil, csrErr("data after the PEM block")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, nil, nil, csrErr("%v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, nil, csrErr("signature does not verify: %v", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || (pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384()) {
		return nil, nil, nil, csrErr("want an ECDSA P-256 or P-384 key")
	}
	if csr.Subject.CommonName != host {
		return nil, nil, nil, csrErr("common name %q is not the host name %q", csr.Subject.CommonName, host)
	}
	var dns []string
	for _, d := range csr.DNSNames {
		switch d {
		case host:
		case "localhost":
			dns = append(dns, d)
		default:
			return nil, nil, nil, csrErr("DNS name %q: only the host name and localhost may be asked for", d)
		}
	}
	if len(csr.EmailAddresses) > 0 || len(csr.URIs) > 0 {
		return nil, nil, nil, csrErr("e-mail and URI names are not issued")
	}
	if len(csr.IPAddresses) > maxCSRIPs {
		return nil, nil, nil, csrErr("%d IP addresses, at most %d", len(csr.IPAddresses), maxCSRIPs)
	}
	for _, ip := range csr.IPAddresses {
		if ip.IsUnspecified() || ip.IsMulticast() {
			return nil, nil, nil, csrErr("IP address %s cannot be a host's", ip)
		}
	}
	if !slices.ContainsFunc(csr.IPAddresses, listenIP.Equal) {
		return nil, nil, nil, csrErr("its IP addresses %v do not include the listen address %s", csr.IPAddresses, listenIP)
	}
	return csr, csr.IPAddresses, dns, nil
}

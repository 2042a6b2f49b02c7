package modinfo

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"strings"
)

// Signature describes the signature appended to a module file, as read from
// the kernel's struct module_signature.
type Signature struct {
	// Algorithm is the public-key algorithm, e.g. "rsa" or "ecdsa". For a
	// PKCS#7 signature, where the struct leaves it zero, it is read from the
	// signature's SignerInfo, and empty if that cannot be parsed. Unknown
	// values are written "unknown(N)" or as a dotted OID.
	Algorithm string
	// Hash is the digest algorithm, e.g. "sha256"; found like Algorithm.
	Hash string
	// IDType is "pkcs7" (id_type 2, what current kernels use), "x509" (1)
	// or "pgp" (0), or "unknown(N)" for other values.
	IDType string
	// SignerLen and KeyIDLen are the lengths of the signer name and key ID
	// that legacy signatures put before the signature; 0 for PKCS#7.
	SignerLen int
	KeyIDLen  int
	// Length is the signature's length in bytes (sig_len).
	Length int
	// Signer and KeyID identify the key a PKCS#7 signature was made with,
	// from its SignerInfo: the issuer's common name (or organisation) and
	// the certificate's serial number in lower-case hex, as sign-file
	// writes them; or, for a signer named by subject key identifier, an
	// empty Signer and the identifier in hex. Empty when the signature
	// cannot be parsed.
	Signer, KeyID string
}

const (
	// sigMagic ends a signed module file.
	sigMagic = "~Module signature appended~\n"
	// sigInfoSize is the size of struct module_signature, which precedes
	// sigMagic: u8 algo, hash, id_type, signer_len, key_id_len, pad[3];
	// be32 sig_len.
	sigInfoSize = 12
	// maxPKCS7Size caps how much of a PKCS#7 signature is read to find its
	// algorithms; real ones are under 1 KiB.
	maxPKCS7Size = 64 << 10
)

// readSignature looks for a module signature at the end of the size bytes
// of r. It returns the signature, or nil when the file does not end in
// sigMagic, and the size of the module proper, without the signature. It
// returns an error when the trailer is present but struct module_signature
// does not fit in the file or describes more bytes than the file has.
func readSignature(r io.ReaderAt, size int64) (*Signature, int64, error) {
	if size < int64(len(sigMagic)) {
		return nil, size, nil
	}
	magic := make([]byte, len(sigMagic))
	if _, err := r.ReadAt(magic, size-int64(len(magic))); err != nil {
		return nil, 0, fmt.Errorf("read signature trailer: %w", err)
	}
	if string(magic) != sigMagic {
		return nil, size, nil
	}

	rest := size - int64(len(sigMagic)) // bytes before the magic
	if rest < sigInfoSize {
		return nil, 0, fmt.Errorf("parse module signature: file too short for struct module_signature (%d bytes before the trailer)", rest)
	}
	raw := make([]byte, sigInfoSize)
	if _, err := r.ReadAt(raw, rest-sigInfoSize); err != nil {
		return nil, 0, fmt.Errorf("read module signature: %w", err)
	}
	rest -= sigInfoSize // bytes before struct module_signature

	sig := &Signature{
		SignerLen: int(raw[3]),
		KeyIDLen:  int(raw[4]),
		Length:    int(binary.BigEndian.Uint32(raw[8:12])),
		IDType:    idTypeName(raw[2]),
	}
	total := int64(sig.Length) + int64(sig.SignerLen) + int64(sig.KeyIDLen)
	if total > rest {
		return nil, 0, fmt.Errorf("parse module signature: signature of %d bytes (sig_len %d, signer_len %d, key_id_len %d) exceeds the %d bytes before it",
			total, sig.Length, sig.SignerLen, sig.KeyIDLen, rest)
	}
	moduleSize := rest - total

	if raw[2] == idPKCS7 {
		if sig.Length <= maxPKCS7Size {
			blob := make([]byte, sig.Length)
			if _, err := r.ReadAt(blob, rest-int64(sig.Length)); err != nil {
				return nil, 0, fmt.Errorf("read module signature: %w", err)
			}
			sig.Algorithm, sig.Hash, sig.Signer, sig.KeyID = pkcs7SignerInfo(blob)
		}
	} else {
		sig.Algorithm = pkeyAlgoName(raw[0])
		sig.Hash = hashAlgoName(raw[1])
	}
	return sig, moduleSize, nil
}

// id_type values of struct module_signature (PKEY_ID_*).
const (
	idPGP   = 0
	idX509  = 1
	idPKCS7 = 2
)

func idTypeName(id byte) string {
	switch id {
	case idPGP:
		return "pgp"
	case idX509:
		return "x509"
	case idPKCS7:
		return "pkcs7"
	default:
		return fmt.Sprintf("unknown(%d)", id)
	}
}

// pkeyAlgoName names a legacy struct module_signature algo value (the
// kernel's old enum pkey_algo).
func pkeyAlgoName(v byte) string {
	switch v {
	case 0:
		return "dsa"
	case 1:
		return "rsa"
	default:
		return fmt.Sprintf("unknown(%d)", v)
	}
}

// hashAlgoName names a struct module_signature hash value (the kernel's
// enum hash_algo, include/uapi/linux/hash_info.h).
func hashAlgoName(v byte) string {
	const names = "md4 md5 sha1 rmd160 sha256 sha384 sha512 sha224 rmd128 rmd256 rmd320 " +
		"wp256 wp384 wp512 tgr128 tgr160 tgr192 sm3 streebog256 streebog512 " +
		"sha3-256 sha3-384 sha3-512"
	if table := strings.Fields(names); int(v) < len(table) {
		return table[v]
	}
	return fmt.Sprintf("unknown(%d)", v)
}

// oidName returns the name the kernel and modinfo(8) use for an algorithm
// OID found in module signatures, or the dotted OID if it is not one.
func oidName(oid asn1.ObjectIdentifier) string {
	s := oid.String()
	switch s {
	case "1.3.14.3.2.26":
		return "sha1"
	case "2.16.840.1.101.3.4.2.1":
		return "sha256"
	case "2.16.840.1.101.3.4.2.2":
		return "sha384"
	case "2.16.840.1.101.3.4.2.3":
		return "sha512"
	case "2.16.840.1.101.3.4.2.4":
		return "sha224"
	case "2.16.840.1.101.3.4.2.8":
		return "sha3-256"
	case "2.16.840.1.101.3.4.2.9":
		return "sha3-384"
	case "2.16.840.1.101.3.4.2.10":
		return "sha3-512"
	case "1.2.840.113549.1.1.1", // rsaEncryption
		"1.2.840.113549.1.1.5",  // sha1WithRSAEncryption
		"1.2.840.113549.1.1.11", // sha256WithRSAEncryption
		"1.2.840.113549.1.1.12", // sha384WithRSAEncryption
		"1.2.840.113549.1.1.13", // sha512WithRSAEncryption
		"1.2.840.113549.1.1.14": // sha224WithRSAEncryption
		return "rsa"
	case "1.2.840.10045.2.1", // id-ecPublicKey
		"1.2.840.10045.4.3.1", // ecdsa-with-SHA224
		"1.2.840.10045.4.3.2", // ecdsa-with-SHA256
		"1.2.840.10045.4.3.3", // ecdsa-with-SHA384
		"1.2.840.10045.4.3.4": // ecdsa-with-SHA512
		return "ecdsa"
	case "1.3.101.112":
		return "ed25519"
	case "2.16.840.1.101.3.4.3.17":
		return "mldsa44"
	case "2.16.840.1.101.3.4.3.18":
		return "mldsa65"
	case "2.16.840.1.101.3.4.3.19":
		return "mldsa87"
	default:
		return s
	}
}

// oidSignedData is the PKCS#7/CMS signedData content type.
const oidSignedData = "1.2.840.113549.1.7.2"

// pkcs7SignerInfo returns the public-key and digest algorithm names of the
// first SignerInfo in a DER PKCS#7 (CMS) signedData blob, or two empty
// strings when der is not one. It reads only the structure it needs:
//
//	ContentInfo ::= SEQUENCE { contentType OID, [0] EXPLICIT SignedData }
//	SignedData ::= SEQUENCE { version, digestAlgorithms SET,
//	    encapContentInfo SEQUENCE, [0] certificates OPTIONAL,
//	    [1] crls OPTIONAL, signerInfos SET OF SignerInfo }
//	SignerInfo ::= SEQUENCE { version, sid, digestAlgorithm,
//	    [0] signedAttrs OPTIONAL, signatureAlgorithm, signature, ... }
//
// It also returns the signer the SignerInfo's sid names (see
// Signature.Signer and KeyID).
func pkcs7SignerInfo(der []byte) (algorithm, hash, signer, keyID string) {
	ci, _, ok := nextElem(der, asn1.ClassUniversal, asn1.TagSequence)
	if !ok {
		return "", "", "", ""
	}
	var contentType asn1.ObjectIdentifier
	rest, err := asn1.Unmarshal(ci, &contentType)
	if err != nil || contentType.String() != oidSignedData {
		return "", "", "", ""
	}
	explicit, _, ok := nextElem(rest, asn1.ClassContextSpecific, 0)
	if !ok {
		return "", "", "", ""
	}
	sd, _, ok := nextElem(explicit, asn1.ClassUniversal, asn1.TagSequence)
	if !ok {
		return "", "", "", ""
	}
	// Skip version, digestAlgorithms and encapContentInfo, then any
	// context-specific certificates or crls.
	for range 3 {
		if _, sd, ok = skipElem(sd); !ok {
			return "", "", "", ""
		}
	}
	var v asn1.RawValue
	for {
		if v, sd, ok = skipElem(sd); !ok {
			return "", "", "", ""
		}
		if v.Class != asn1.ClassContextSpecific {
			break
		}
	}
	if v.Class != asn1.ClassUniversal || v.Tag != asn1.TagSet {
		return "", "", "", ""
	}
	si, _, ok := nextElem(v.Bytes, asn1.ClassUniversal, asn1.TagSequence)
	if !ok {
		return "", "", "", ""
	}
	// Skip version; read sid.
	if _, si, ok = skipElem(si); !ok {
		return "", "", "", ""
	}
	var sid asn1.RawValue
	if sid, si, ok = skipElem(si); !ok {
		return "", "", "", ""
	}
	signer, keyID = signerOf(sid)
	digestAlg, si, ok := algorithmOID(si)
	if !ok {
		return "", "", "", ""
	}
	if v, rest, ok := skipElem(si); ok && v.Class == asn1.ClassContextSpecific && v.Tag == 0 {
		si = rest // signedAttrs
	}
	sigAlg, _, ok := algorithmOID(si)
	if !ok {
		return "", "", "", ""
	}
	return oidName(sigAlg), oidName(digestAlg), signer, keyID
}

// signerOf reads a SignerInfo's sid: issuerAndSerialNumber ::= SEQUENCE
// { issuer Name, serialNumber INTEGER }, or [0] SubjectKeyIdentifier.
func signerOf(sid asn1.RawValue) (signer, keyID string) {
	if sid.Class == asn1.ClassContextSpecific && sid.Tag == 0 {
		return "", hex.EncodeToString(sid.Bytes)
	}
	if sid.Class != asn1.ClassUniversal || sid.Tag != asn1.TagSequence {
		return "", ""
	}
	var ias struct {
		Issuer asn1.RawValue
		Serial *big.Int
	}
	if _, err := asn1.Unmarshal(sid.FullBytes, &ias); err != nil || ias.Serial == nil {
		return "", ""
	}
	var rdn pkix.RDNSequence
	if _, err := asn1.Unmarshal(ias.Issuer.FullBytes, &rdn); err == nil {
		var name pkix.Name
		name.FillFromRDNSequence(&rdn)
		signer = name.CommonName
		if signer == "" && len(name.Organization) > 0 {
			signer = name.Organization[0]
		}
	}
	return signer, hex.EncodeToString(ias.Serial.Bytes())
}

// skipElem returns the first DER element of b and the bytes after it.
func skipElem(b []byte) (asn1.RawValue, []byte, bool) {
	var v asn1.RawValue
	rest, err := asn1.Unmarshal(b, &v)
	if err != nil {
		return asn1.RawValue{}, nil, false
	}
	return v, rest, true
}

// nextElem returns the contents of the first DER element of b and the bytes
// after it, or ok false when b does not start with an element of the given
// class and tag.
func nextElem(b []byte, class, tag int) (contents, rest []byte, ok bool) {
	v, rest, ok := skipElem(b)
	if !ok || v.Class != class || v.Tag != tag {
		return nil, nil, false
	}
	return v.Bytes, rest, true
}

// algorithmOID parses the AlgorithmIdentifier at the start of b and returns
// its OID and the bytes after it.
func algorithmOID(b []byte) (asn1.ObjectIdentifier, []byte, bool) {
	seq, rest, ok := nextElem(b, asn1.ClassUniversal, asn1.TagSequence)
	if !ok {
		return nil, nil, false
	}
	var oid asn1.ObjectIdentifier
	if _, err := asn1.Unmarshal(seq, &oid); err != nil {
		return nil, nil, false
	}
	return oid, rest, true
}

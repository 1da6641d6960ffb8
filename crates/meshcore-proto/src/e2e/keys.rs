//! Key material: X25519 keys from Ed25519 identities, the session key schedule and the
//! AEAD. Every primitive comes from a maintained crate (`x25519-dalek`, `hkdf` + `sha2`,
//! `ring`); this file only wires them together as the module doc of [`e2e`](super)
//! specifies.

use hkdf::Hkdf;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::Sha256;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use super::wire::{SessionHeader, PREAMBLE_LEN, TAG_LEN};
use crate::identity::{NodeId, NodeKeypair, NODE_ID_LEN};

/// The HKDF `info` prefix of every session key; changing the key schedule means changing
/// this label.
pub const KDF_LABEL: &[u8] = b"meshcore-e2e-v1";

/// Length of an AES-256-GCM key.
const SESSION_KEY_LEN: usize = 32;

/// The first four nonce bytes. Each session key encrypts one direction of one session
/// only, so they carry nothing and are zero (as in WireGuard); the counter fills the rest.
const NONCE_PREFIX: [u8; 4] = [0; 4];

/// Why no session key could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A public key in the exchange has small order, so an X25519 result is all zeros and
    /// anyone could compute the key (Wycheproof's "ZeroSharedSecret" cases).
    #[error("a key in the exchange has small order: no secret can be agreed")]
    WeakKey,
    /// HKDF or the cipher refused to build a key. This cannot happen with the fixed
    /// lengths used here; it is reported rather than panicking.
    #[error("the session key could not be derived")]
    Derivation,
}

/// The X25519 public key of a node: the Montgomery form `u = (1 + y) / (1 − y)` of its
/// Ed25519 public key (the birational map of RFC 7748 §4.1).
pub fn x25519_public_key(node: &NodeId) -> [u8; 32] {
    // A NodeId is checked to be a valid point when it is built, so this never falls back;
    // if it did, the all-zero key is of small order and every exchange with it is refused.
    ed25519_dalek::VerifyingKey::from_bytes(node.as_bytes())
        .map(|key| key.to_montgomery().to_bytes())
        .unwrap_or([0; 32])
}

/// The X25519 secret of a node: the first half of SHA-512 of its Ed25519 seed, the same
/// scalar Ed25519 signs with (X25519 clamps it). Its public key is
/// [`x25519_public_key`]`(&keypair.node_id())`.
pub(crate) fn x25519_static_secret(keypair: &NodeKeypair) -> StaticSecret {
    let scalar = Zeroizing::new(keypair.signing_key().to_scalar_bytes());
    StaticSecret::from(*scalar)
}

/// The sender's key for `session` to `recipient`: `es = X25519(e, S_r)`,
/// `ss = X25519(s_s, S_r)`.
pub(crate) fn sender_session_key(
    local: &NodeKeypair,
    recipient: &NodeId,
    ephemeral: &StaticSecret,
    session: &SessionHeader,
) -> Result<SessionKey, KeyError> {
    let recipient_public = PublicKey::from(x25519_public_key(recipient));
    let es = ephemeral.diffie_hellman(&recipient_public);
    let ss = x25519_static_secret(local).diffie_hellman(&recipient_public);
    SessionKey::derive(&es, &ss, &local.node_id(), recipient, session)
}

/// The recipient's key for `session` from `sender`: `es = X25519(s_r, E)`,
/// `ss = X25519(s_r, S_s)`.
pub(crate) fn recipient_session_key(
    local_secret: &StaticSecret,
    local_id: &NodeId,
    sender: &NodeId,
    session: &SessionHeader,
) -> Result<SessionKey, KeyError> {
    let es = local_secret.diffie_hellman(&PublicKey::from(session.ephemeral));
    let ss = local_secret.diffie_hellman(&PublicKey::from(x25519_public_key(sender)));
    SessionKey::derive(&es, &ss, sender, local_id, session)
}

/// The HKDF `info` of a session: label, sender id, recipient id, then the session header.
fn kdf_info(
    sender: &NodeId,
    recipient: &NodeId,
    session: &SessionHeader,
) -> [u8; KDF_LABEL.len() + 2 * NODE_ID_LEN + 32 + 8 + 8] {
    let mut info = [0u8; KDF_LABEL.len() + 2 * NODE_ID_LEN + 32 + 8 + 8];
    let mut at = 0;
    for part in [
        KDF_LABEL,
        sender.as_bytes(),
        recipient.as_bytes(),
        &session.ephemeral,
        &session.session_id.to_be_bytes(),
        &session.created_at.as_millis().to_be_bytes(),
    ] {
        info[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    info
}

/// The AES-256-GCM key of one session, one direction (sender to recipient).
pub(crate) struct SessionKey(LessSafeKey);

impl SessionKey {
    /// `HKDF-SHA256(salt = session id, ikm = es || ss, info)` → 32-byte AES-256-GCM key.
    fn derive(
        es: &SharedSecret,
        ss: &SharedSecret,
        sender: &NodeId,
        recipient: &NodeId,
        session: &SessionHeader,
    ) -> Result<Self, KeyError> {
        if !es.was_contributory() || !ss.was_contributory() {
            return Err(KeyError::WeakKey);
        }
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(es.as_bytes());
        ikm[32..].copy_from_slice(ss.as_bytes());
        let salt = session.session_id.to_be_bytes();
        let mut okm = Zeroizing::new([0u8; SESSION_KEY_LEN]);
        Hkdf::<Sha256>::new(Some(&salt), ikm.as_slice())
            .expand(&kdf_info(sender, recipient, session), okm.as_mut_slice())
            .map_err(|_| KeyError::Derivation)?;
        let key =
            UnboundKey::new(&AES_256_GCM, okm.as_slice()).map_err(|_| KeyError::Derivation)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// Encrypts `plaintext` as message `counter`; returns `preamble || ciphertext || tag`.
    /// `None` only if the cipher refuses the length (far beyond any payload bound).
    pub(crate) fn seal(
        &self,
        counter: u64,
        preamble: &[u8; PREAMBLE_LEN],
        associated_data: &[u8],
        plaintext: &[u8],
    ) -> Option<Vec<u8>> {
        let mut sealed = Vec::with_capacity(PREAMBLE_LEN + plaintext.len() + TAG_LEN);
        sealed.extend_from_slice(preamble);
        sealed.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                nonce(counter),
                Aad::from(aad(preamble, associated_data)),
                &mut sealed[PREAMBLE_LEN..],
            )
            .ok()?;
        sealed.extend_from_slice(tag.as_ref());
        Some(sealed)
    }

    /// Decrypts and authenticates message `counter`; `None` if it does not authenticate.
    pub(crate) fn open(
        &self,
        counter: u64,
        preamble: &[u8; PREAMBLE_LEN],
        associated_data: &[u8],
        ciphertext: &[u8],
    ) -> Option<Vec<u8>> {
        let mut buffer = ciphertext.to_vec();
        let plaintext_len = self
            .0
            .open_in_place(
                nonce(counter),
                Aad::from(aad(preamble, associated_data)),
                &mut buffer,
            )
            .ok()?
            .len();
        buffer.truncate(plaintext_len);
        Some(buffer)
    }
}

/// The 96-bit nonce of message `counter`: [`NONCE_PREFIX`] then the counter, big-endian.
fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[..4].copy_from_slice(&NONCE_PREFIX);
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The AEAD's associated data: the payload preamble, then the caller's data.
fn aad(preamble: &[u8; PREAMBLE_LEN], associated_data: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(PREAMBLE_LEN + associated_data.len());
    aad.extend_from_slice(preamble);
    aad.extend_from_slice(associated_data);
    aad
}

/// Known-answer tests of the primitives, each from a published source.
#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use x25519_dalek::{x25519, X25519_BASEPOINT_BYTES};

    fn h<const N: usize>(text: &str) -> [u8; N] {
        let mut bytes = [0u8; N];
        hex::decode_to_slice(text, &mut bytes).expect("test vector hex");
        bytes
    }

    fn v(text: &str) -> Vec<u8> {
        hex::decode(text).expect("test vector hex")
    }

    /// RFC 7748 §5.2, the two single scalar multiplications.
    #[test]
    fn x25519_matches_rfc7748_section_5_2() {
        for (scalar, u, expected) in [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
        ] {
            assert_eq!(x25519(h(scalar), h(u)), h::<32>(expected));
            // The same through the API this module uses (StaticSecret clamps the same way).
            let shared =
                StaticSecret::from(h::<32>(scalar)).diffie_hellman(&PublicKey::from(h::<32>(u)));
            assert_eq!(shared.to_bytes(), h::<32>(expected));
        }
    }

    /// RFC 7748 §5.2, the iterated test after 1 and 1,000 iterations (the 1,000,000 one is
    /// too slow for a debug test run).
    #[test]
    fn x25519_matches_rfc7748_section_5_2_iterated() {
        let mut k = X25519_BASEPOINT_BYTES;
        let mut u = X25519_BASEPOINT_BYTES;
        for iteration in 1..=1000 {
            let result = x25519(k, u);
            u = k;
            k = result;
            if iteration == 1 {
                assert_eq!(
                    k,
                    h::<32>("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
                );
            }
        }
        assert_eq!(
            k,
            h::<32>("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
        );
    }

    /// RFC 7748 §6.1, Alice and Bob.
    #[test]
    fn x25519_matches_rfc7748_section_6_1() {
        let alice = StaticSecret::from(h::<32>(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let bob = StaticSecret::from(h::<32>(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        let alice_public = PublicKey::from(&alice);
        let bob_public = PublicKey::from(&bob);
        assert_eq!(
            alice_public.to_bytes(),
            h::<32>("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            bob_public.to_bytes(),
            h::<32>("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = h::<32>("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(alice.diffie_hellman(&bob_public).to_bytes(), shared);
        assert_eq!(bob.diffie_hellman(&alice_public).to_bytes(), shared);
    }

    /// Wycheproof `x25519_test.json`, tcIds 32, 33, 63, 64 and 65: small-order public keys
    /// give an all-zero secret, which [`SessionKey::derive`] refuses.
    #[test]
    fn small_order_keys_are_refused() {
        let recipient = NodeKeypair::from_signing_key(SigningKey::from_bytes(&[3; 32]));
        let secret = x25519_static_secret(&recipient);
        let sender = NodeKeypair::from_signing_key(SigningKey::from_bytes(&[4; 32])).node_id();
        for (public, private) in [
            (
                "0000000000000000000000000000000000000000000000000000000000000000",
                "88227494038f2bb811d47805bcdf04a2ac585ada7f2f23389bfd4658f9ddd45e",
            ),
            (
                "0100000000000000000000000000000000000000000000000000000000000000",
                "48232e8972b61c7e61930eb9450b5070eae1c670475685541f0476217e48184f",
            ),
            (
                "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
                "e0f978dfcd3a8f1a5093418de54136a584c20b7b349afdf6c0520886f95b1272",
            ),
            (
                "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
                "387355d995616090503aafad49da01fb3dc3eda962704eaee6b86f9e20c92579",
            ),
            (
                "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
                "c8fe0df92ae68a03023fc0c9adb9557d31be7feed0d3ab36c558143daf4dbb40",
            ),
        ] {
            let shared = StaticSecret::from(h::<32>(private))
                .diffie_hellman(&PublicKey::from(h::<32>(public)));
            assert_eq!(shared.to_bytes(), [0; 32]);
            assert!(!shared.was_contributory());
            let session = SessionHeader {
                ephemeral: h(public),
                session_id: 1,
                created_at: crate::dht::time::Timestamp::ZERO,
            };
            assert!(matches!(
                recipient_session_key(&secret, &recipient.node_id(), &sender, &session),
                Err(KeyError::WeakKey)
            ));
        }
    }

    /// The Ed25519 → X25519 conversion, with the secret keys of RFC 8032 §7.1 TEST 1 and
    /// TEST 2. The expected values are those of ed25519-dalek's `tests/x25519.rs`,
    /// recomputed independently for this test with OpenSSL's X25519 and
    /// `u = (1 + y) / (1 − y) mod p` over the RFC's public keys.
    #[test]
    fn ed25519_keys_convert_to_the_published_x25519_keys() {
        let a = NodeKeypair::from_signing_key(SigningKey::from_bytes(&h(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        )));
        let b = NodeKeypair::from_signing_key(SigningKey::from_bytes(&h(
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        )));
        // The RFC 8032 public keys.
        assert_eq!(
            a.node_id().as_bytes(),
            &h::<32>("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        assert_eq!(
            b.node_id().as_bytes(),
            &h::<32>("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
        );
        let a_public = h::<32>("d85e07ec22b0ad881537c2f44d662d1a143cf830c57aca4305d85c7a90f6b62e");
        let b_public = h::<32>("25c704c594b88afc00a76b69d1ed2b984d7e22550f3ed0802d04fbcd07d38d47");
        assert_eq!(x25519_public_key(&a.node_id()), a_public);
        assert_eq!(x25519_public_key(&b.node_id()), b_public);
        // The converted secret belongs to the converted public key.
        assert_eq!(
            PublicKey::from(&x25519_static_secret(&a)).to_bytes(),
            a_public
        );
        assert_eq!(
            PublicKey::from(&x25519_static_secret(&b)).to_bytes(),
            b_public
        );
        let shared = h::<32>("5166f24a6918368e2af831a4affadd97af0ac326bdf143596c045967cc00230e");
        assert_eq!(
            x25519_static_secret(&a)
                .diffie_hellman(&PublicKey::from(b_public))
                .to_bytes(),
            shared
        );
        assert_eq!(
            x25519_static_secret(&b)
                .diffie_hellman(&PublicKey::from(a_public))
                .to_bytes(),
            shared
        );
    }

    /// RFC 5869 appendix A.1 (test case 1) and A.3 (test case 3: no salt, no info); the
    /// same vectors are Wycheproof `hkdf_sha256_test.json` tcIds 1 and 2.
    #[test]
    fn hkdf_sha256_matches_rfc5869() {
        let ikm = [0x0b; 22];
        let salt = v("000102030405060708090a0b0c");
        let info = v("f0f1f2f3f4f5f6f7f8f9");
        let (prk, hkdf) = Hkdf::<Sha256>::extract(Some(&salt), &ikm);
        assert_eq!(
            prk.as_slice(),
            v("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
        );
        let mut okm = [0u8; 42];
        hkdf.expand(&info, &mut okm)
            .expect("42 bytes is a valid length");
        assert_eq!(
            okm.to_vec(),
            v("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
        );

        let mut okm = [0u8; 42];
        Hkdf::<Sha256>::new(None, &ikm)
            .expand(&[], &mut okm)
            .expect("42 bytes is a valid length");
        assert_eq!(
            okm.to_vec(),
            v("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
        );
    }

    struct GcmVector {
        source: &'static str,
        key: &'static str,
        iv: &'static str,
        aad: &'static str,
        plaintext: &'static str,
        ciphertext: &'static str,
        tag: &'static str,
        valid: bool,
    }

    /// AES-256-GCM known answers: the GCM specification's (McGrew & Viega) test case 16,
    /// which NIST publishes too, and Wycheproof `aes_gcm_test.json` (C2SP/wycheproof at
    /// dac1dd47) tcIds 91, 92, 94, 128 and the invalid 130 (flipped tag bit).
    const GCM_VECTORS: &[GcmVector] = &[
        GcmVector {
            source: "GCM spec test case 16",
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            iv: "cafebabefacedbaddecaf888",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            plaintext: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            ciphertext: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
            valid: true,
        },
        GcmVector {
            source: "Wycheproof tcId 91",
            key: "92ace3e348cd821092cd921aa3546374299ab46209691bc28b8752d17f123c20",
            iv: "00112233445566778899aabb",
            aad: "00000000ffffffff",
            plaintext: "00010203040506070809",
            ciphertext: "e27abdd2d2a53d2f136b",
            tag: "9a4a2579529301bcfb71c78d4060f52c",
            valid: true,
        },
        GcmVector {
            source: "Wycheproof tcId 92",
            key: "29d3a44f8723dc640239100c365423a312934ac80239212ac3df3421a2098123",
            iv: "00112233445566778899aabb",
            aad: "aabbccddeeff",
            plaintext: "",
            ciphertext: "",
            tag: "2a7d77fa526b8250cb296078926b5020",
            valid: true,
        },
        GcmVector {
            source: "Wycheproof tcId 94",
            key: "cc56b680552eb75008f5484b4cb803fa5063ebd6eab91f6ab6aef4916a766273",
            iv: "99e23ec48985bccdeeab60f1",
            aad: "",
            plaintext: "2a",
            ciphertext: "06",
            tag: "633c1e9703ef744ffffb40edf9d14355",
            valid: true,
        },
        GcmVector {
            source: "Wycheproof tcId 128",
            key: "00112233445566778899aabbccddeeff102132435465768798a9bacbdcedfe0f",
            iv: "000000000000000000000000",
            aad: "",
            plaintext: "561008fa07a68f5c61285cd013464eaf",
            ciphertext: "23293e9b07ca7d1b0cae7cc489a973b3",
            tag: "ffffffffffffffffffffffffffffffff",
            valid: true,
        },
        GcmVector {
            source: "Wycheproof tcId 130 (flipped bit 0 in tag)",
            key: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            iv: "505152535455565758595a5b",
            aad: "",
            plaintext: "202122232425262728292a2b2c2d2e2f",
            ciphertext: "b2061457c0759fc1749f174ee1ccadfa",
            tag: "9de8fef6d8ab1bf1bf887232eab590dd",
            valid: false,
        },
    ];

    #[test]
    fn aes_256_gcm_matches_published_vectors() {
        for vector in GCM_VECTORS {
            let key = LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &v(vector.key)).expect("a 32-byte key"),
            );
            let iv = || Nonce::try_assume_unique_for_key(&v(vector.iv)).expect("a 12-byte IV");
            let mut sealed = v(vector.ciphertext);
            sealed.extend_from_slice(&v(vector.tag));
            let opened = key
                .open_in_place(iv(), Aad::from(v(vector.aad)), &mut sealed)
                .map(|plaintext| plaintext.to_vec());
            if vector.valid {
                assert_eq!(opened, Ok(v(vector.plaintext)), "{}", vector.source);
                let mut buffer = v(vector.plaintext);
                let tag = key
                    .seal_in_place_separate_tag(iv(), Aad::from(v(vector.aad)), &mut buffer)
                    .expect("sealing a short message");
                assert_eq!(buffer, v(vector.ciphertext), "{}", vector.source);
                assert_eq!(tag.as_ref(), v(vector.tag).as_slice(), "{}", vector.source);
            } else {
                assert!(opened.is_err(), "{}", vector.source);
            }
        }
    }

    #[test]
    fn the_nonce_is_the_prefix_then_the_big_endian_counter() {
        assert_eq!(
            nonce(0x0102_0304_0506_0708).as_ref(),
            &[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
    }
}

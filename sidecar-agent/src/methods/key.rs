//! The method table's row key, and its borrowed twin for lookups: a call finds its row with a key made of slices
//! of its record, so counting a call whose row exists allocates nothing (an owned key was six `String`s, built and
//! cloned for every call).
//!
//! A borrowed key must hash as the owned one (`hashbrown::Equivalent` requires it): both derive `Hash` over the
//! same fields in the same order, and a `&str` hashes as the `String` it equals.

use std::sync::Arc;

use hashbrown::Equivalent;

/// A row of the method table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Key {
    pub service: String,
    pub method: String,
    pub gray_version: String,
    /// The bounded tenant label (empty when the filter's tenant dimension is off).
    pub tenant: String,
    pub direction: i32,
    pub rpc_system_name: String,
    pub pid: u32,
    pub start: u64,
}

/// [`Key`], borrowed.
#[derive(Clone, Copy, Debug, Hash)]
pub(super) struct KeyRef<'a> {
    pub service: &'a str,
    pub method: &'a str,
    pub gray_version: &'a str,
    pub tenant: &'a str,
    pub direction: i32,
    pub rpc_system_name: &'a str,
    pub pid: u32,
    pub start: u64,
}

impl KeyRef<'_> {
    pub fn to_owned(self) -> Key {
        Key {
            service: self.service.to_owned(),
            method: self.method.to_owned(),
            gray_version: self.gray_version.to_owned(),
            tenant: self.tenant.to_owned(),
            direction: self.direction,
            rpc_system_name: self.rpc_system_name.to_owned(),
            pid: self.pid,
            start: self.start,
        }
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, k: &Key) -> bool {
        self.pid == k.pid
            && self.start == k.start
            && self.direction == k.direction
            && self.method == k.method
            && self.service == k.service
            && self.gray_version == k.gray_version
            && self.tenant == k.tenant
            && self.rpc_system_name == k.rpc_system_name
    }
}

/// The table holds its keys shared (`Arc<Key>`, with its index and its idle order): a borrowed key finds them as
/// it finds the key itself (an `Arc` hashes as what it points to).
impl Equivalent<Arc<Key>> for KeyRef<'_> {
    fn equivalent(&self, k: &Arc<Key>) -> bool {
        Equivalent::<Key>::equivalent(self, k)
    }
}

/// An interface (service, method), borrowed: hashes as the `(String, String)` it equals.
#[derive(Clone, Copy, Debug, Hash)]
pub(super) struct InterfaceRef<'a>(pub &'a str, pub &'a str);

impl Equivalent<(String, String)> for InterfaceRef<'_> {
    fn equivalent(&self, k: &(String, String)) -> bool {
        self.0 == k.0 && self.1 == k.1
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    #[test]
    fn a_borrowed_key_hashes_and_compares_as_its_owned_key() {
        let r = KeyRef {
            service: "pkg.Greeter",
            method: "SayHello",
            gray_version: "v2",
            tenant: "t_1",
            direction: 1,
            rpc_system_name: "grpc",
            pid: 42,
            start: 7,
        };
        let k = r.to_owned();
        let s = hashbrown::DefaultHashBuilder::default();
        assert_eq!(s.hash_one(r), s.hash_one(&k));
        assert!(Equivalent::<Key>::equivalent(&r, &k));
        let shared = Arc::new(k.clone());
        assert_eq!(s.hash_one(&shared), s.hash_one(&k));
        assert!(Equivalent::<Arc<Key>>::equivalent(&r, &shared));
        let other = KeyRef { tenant: "t_2", ..r };
        assert!(!Equivalent::<Key>::equivalent(&other, &k));
        assert!(!Equivalent::<Arc<Key>>::equivalent(&other, &shared));
        let i = InterfaceRef("pkg.Greeter", "SayHello");
        let owned = ("pkg.Greeter".to_owned(), "SayHello".to_owned());
        assert_eq!(s.hash_one(i), s.hash_one(&owned));
        assert!(i.equivalent(&owned));
    }
}

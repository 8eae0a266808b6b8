//! The hash table behind `set` and `frozenset`, laid out as CPython 3.11's
//! `Objects/setobject.c` lays out its own (coe patch, see `PATCHES.md`).
//!
//! CPython iterates a set in slot order, and programs (and their tests) depend on that order:
//! `tuple({3, 1, 2})`, `set.pop()`, `repr`. [`crate::dict_inner::Dict`] keeps insertion
//! order instead, so this table reproduces CPython's rules exactly: the first slot is
//! `hash & mask`, then up to [`LINEAR_PROBES`] neighbours, then a perturbed jump; a new key
//! takes the last dummy seen before the first empty slot; the table grows to `used * 4` (`* 2`
//! above 50,000) once `fill * 5 >= mask * 3`; a merge pre-sizes and, into an empty table,
//! copies slot for slot or re-inserts in the source's slot order; `pop` walks from a finger.
//!
//! Keys are compared with `__eq__` outside the lock. A lookup that ran Python restarts when the
//! table changed meanwhile, and a mutation checks, under the write lock, that nothing changed
//! since its lookup (or looks up again).

use crate::{
    AsObject, PyObject, PyObjectRef, PyResult, VirtualMachine,
    common::{
        hash::PyHash,
        lock::{PyRwLock, PyRwLockReadGuard, PyRwLockWriteGuard},
    },
    dict_inner::DictKey,
    object::{Traverse, TraverseFn},
};
use core::mem::size_of;

/// Slots of a new or cleared table (CPython's `PySet_MINSIZE`).
const MIN_SIZE: usize = 8;
/// Neighbouring slots probed before jumping (CPython's `LINEAR_PROBES`).
const LINEAR_PROBES: usize = 9;
/// CPython's `PERTURB_SHIFT`.
const PERTURB_SHIFT: u32 = 5;
/// Above this many keys the table grows by 2 instead of 4.
const LARGE_SET: usize = 50_000;

#[derive(Clone)]
enum Slot {
    Empty,
    /// A deleted key: probing goes on past it, and an insert may reuse it.
    Dummy,
    Active {
        hash: PyHash,
        key: PyObjectRef,
    },
}

#[derive(Clone)]
struct Table {
    /// `mask + 1` slots, a power of two.
    slots: Vec<Slot>,
    /// Active and dummy slots.
    fill: usize,
    /// Active slots.
    used: usize,
    /// Where `pop` starts looking (CPython's `finger`).
    finger: usize,
    /// Bumped by every change, so a lookup that released the lock can tell.
    version: u64,
    /// Bumped when the slots are replaced (resize, clear, a merge into an empty table).
    layout: u64,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            slots: vec![Slot::Empty; MIN_SIZE],
            fill: 0,
            used: 0,
            finger: 0,
            version: 0,
            layout: 0,
        }
    }
}

/// The slots CPython visits for `hash` in a table of `mask + 1` slots: `i`, then up to
/// [`LINEAR_PROBES`] neighbours when they fit before the end, then a perturbed jump.
struct ProbeSequence {
    mask: u64,
    base: u64,
    offset: u64,
    linear: u64,
    perturb: u64,
}

impl ProbeSequence {
    fn new(hash: PyHash, mask: usize) -> Self {
        let mask = mask as u64;
        let base = hash as u64 & mask;
        Self {
            mask,
            base,
            offset: 0,
            linear: Self::linear_probes(base, mask),
            perturb: hash as u64,
        }
    }

    fn linear_probes(base: u64, mask: u64) -> u64 {
        if base + LINEAR_PROBES as u64 <= mask {
            LINEAR_PROBES as u64
        } else {
            0
        }
    }

    fn next_slot(&mut self) -> usize {
        if self.offset > self.linear {
            self.perturb >>= PERTURB_SHIFT;
            self.base = self
                .base
                .wrapping_mul(5)
                .wrapping_add(1)
                .wrapping_add(self.perturb)
                & self.mask;
            self.offset = 0;
            self.linear = Self::linear_probes(self.base, self.mask);
        }
        let slot = self.base + self.offset;
        self.offset += 1;
        slot as usize
    }
}

/// What a lookup found, valid while the table's version is `version`.
#[derive(Clone, Copy)]
enum Lookup {
    Found {
        slot: usize,
    },
    /// Not there; an insert goes to `slot` (a dummy when `reuses_dummy`).
    Missing {
        slot: usize,
        reuses_dummy: bool,
    },
}

impl Table {
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn changed(&mut self) {
        self.version = self.version.wrapping_add(1);
    }

    fn relaid(&mut self) {
        self.layout = self.layout.wrapping_add(1);
        self.changed();
    }

    /// CPython's `set_insert_clean`: place a key known to be absent in a table with no dummies.
    fn insert_clean(slots: &mut [Slot], hash: PyHash, key: PyObjectRef) {
        let mut probe = ProbeSequence::new(hash, slots.len() - 1);
        loop {
            let slot = probe.next_slot();
            if let Slot::Empty = slots[slot] {
                slots[slot] = Slot::Active { hash, key };
                return;
            }
        }
    }

    /// CPython's `set_table_resize`: a table of the smallest power of two above `min_used`,
    /// live keys re-inserted in slot order, dummies dropped.
    fn resize(&mut self, min_used: usize) {
        let mut size = MIN_SIZE;
        while size <= min_used {
            size <<= 1;
        }
        if size == MIN_SIZE && self.slots.len() == MIN_SIZE && self.fill == self.used {
            return;
        }
        let old = core::mem::replace(&mut self.slots, vec![Slot::Empty; size]);
        for slot in old {
            if let Slot::Active { hash, key } = slot {
                Self::insert_clean(&mut self.slots, hash, key);
            }
        }
        self.fill = self.used;
        self.relaid();
    }

    fn grow_after_insert(&mut self) {
        if self.fill * 5 >= self.mask() * 3 {
            self.resize(growth_target(self.used));
        }
    }

    fn store(&mut self, lookup: Lookup, hash: PyHash, key: PyObjectRef) {
        let Lookup::Missing { slot, reuses_dummy } = lookup else {
            return;
        };
        self.slots[slot] = Slot::Active { hash, key };
        self.used += 1;
        self.changed();
        if !reuses_dummy {
            self.fill += 1;
            self.grow_after_insert();
        }
    }

    fn remove(&mut self, slot: usize) -> Option<PyObjectRef> {
        match core::mem::replace(&mut self.slots[slot], Slot::Dummy) {
            Slot::Active { key, .. } => {
                self.used -= 1;
                self.changed();
                Some(key)
            }
            other => {
                self.slots[slot] = other;
                None
            }
        }
    }

    /// Grow before adding `incoming` keys, as CPython's `set_merge` and `set_update_internal`
    /// do for a set or a dict.
    fn reserve(&mut self, incoming: usize) {
        if (self.fill + incoming) * 5 >= self.mask() * 3 {
            self.resize((self.used + incoming) * 2);
        }
    }

    /// The empty-table half of CPython's `set_merge`: copy slot for slot when the sizes match
    /// and the source has no dummies, else re-insert in the source's slot order.
    fn fill_from(&mut self, source: Snapshot) {
        debug_assert_eq!(self.fill, 0);
        if self.slots.len() == source.slots.len() && !source.has_dummies {
            self.slots = source.slots;
        } else {
            for slot in source.slots {
                if let Slot::Active { hash, key } = slot {
                    Self::insert_clean(&mut self.slots, hash, key);
                }
            }
        }
        self.fill = source.used;
        self.used = source.used;
        self.relaid();
    }

    fn active(&self) -> impl Iterator<Item = (&PyObjectRef, PyHash)> {
        self.slots.iter().filter_map(|slot| match slot {
            Slot::Active { hash, key } => Some((key, *hash)),
            _ => None,
        })
    }
}

/// A copy of a table's slots, taken under its lock, to merge from.
struct Snapshot {
    slots: Vec<Slot>,
    used: usize,
    has_dummies: bool,
}

/// The size CPython resizes to after an insert fills too much of the table.
fn growth_target(used: usize) -> usize {
    if used > LARGE_SET { used * 2 } else { used * 4 }
}

/// What a set iterator remembers to detect a change: CPython compares `used` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SetSize {
    used: usize,
}

/// The set was changed under an iterator holding an older [`SetSize`].
#[derive(Debug)]
pub(crate) struct SetChanged;

/// A `set`'s or `frozenset`'s table; see the module docs.
#[derive(Default)]
pub(crate) struct SetTable {
    inner: PyRwLock<Table>,
}

unsafe impl Traverse for Table {
    fn traverse(&self, tracer_fn: &mut TraverseFn<'_>) {
        for (key, _) in self.active() {
            key.traverse(tracer_fn);
        }
    }
}

unsafe impl Traverse for SetTable {
    fn traverse(&self, tracer_fn: &mut TraverseFn<'_>) {
        self.inner.traverse(tracer_fn);
    }
}

impl Clone for SetTable {
    /// CPython's `set_copy`: a new table merged from this one.
    fn clone(&self) -> Self {
        let source = self.snapshot();
        let mut table = Table::default();
        if source.used > 0 {
            table.reserve(source.used);
            table.fill_from(source);
        }
        Self {
            inner: PyRwLock::new(table),
        }
    }
}

impl SetTable {
    fn read(&self) -> PyRwLockReadGuard<'_, Table> {
        self.inner.read()
    }

    fn write(&self) -> PyRwLockWriteGuard<'_, Table> {
        self.inner.write()
    }

    pub(crate) fn len(&self) -> usize {
        self.read().used
    }

    pub(crate) fn size(&self) -> SetSize {
        SetSize {
            used: self.read().used,
        }
    }

    pub(crate) fn sizeof(&self) -> usize {
        size_of::<Self>() + self.read().slots.len() * size_of::<Slot>()
    }

    /// CPython's `set_add_entry` probe: where `key` is, or where it would go, and the version
    /// of the table the answer holds for. `__eq__` runs without the lock; the probe restarts
    /// when the table changed meanwhile.
    fn lookup<K: DictKey + ?Sized>(
        &self,
        vm: &VirtualMachine,
        key: &K,
        hash: PyHash,
    ) -> PyResult<(Lookup, u64)> {
        'restart: loop {
            let mut table = self.read();
            let mut probe = ProbeSequence::new(hash, table.mask());
            let mut dummy = None;
            loop {
                let slot = probe.next_slot();
                let stored = match &table.slots[slot] {
                    Slot::Empty => {
                        let lookup = match dummy {
                            Some(dummy) => Lookup::Missing {
                                slot: dummy,
                                reuses_dummy: true,
                            },
                            None => Lookup::Missing {
                                slot,
                                reuses_dummy: false,
                            },
                        };
                        return Ok((lookup, table.version));
                    }
                    Slot::Dummy => {
                        dummy = Some(slot);
                        continue;
                    }
                    // As CPython: identity and `__eq__` only for keys of the same hash.
                    Slot::Active {
                        hash: stored,
                        key: stored_key,
                    } => {
                        if *stored != hash {
                            continue;
                        }
                        if key.key_is(stored_key) {
                            return Ok((Lookup::Found { slot }, table.version));
                        }
                        stored_key.clone()
                    }
                };
                let (version, layout, stored_id) = (table.version, table.layout, stored.get_id());
                drop(table);
                let equal = key.key_eq(vm, &stored);
                // Released before the lock is taken again: this may be the key's last
                // reference, and its `__del__` may change this set.
                drop(stored);
                let equal = equal?;
                table = self.read();
                // CPython restarts when the table was reallocated or the slot's key changed.
                let same_slot = table.layout == layout
                    && matches!(&table.slots[slot], Slot::Active { key, .. } if key.get_id() == stored_id);
                if !same_slot {
                    continue 'restart;
                }
                if equal {
                    return Ok((Lookup::Found { slot }, table.version));
                }
                // Other changes (keys added elsewhere) may have taken a dummy seen earlier.
                if table.version != version {
                    continue 'restart;
                }
            }
        }
    }

    pub(crate) fn contains<K: DictKey + ?Sized>(
        &self,
        vm: &VirtualMachine,
        key: &K,
    ) -> PyResult<bool> {
        let hash = key.key_hash(vm)?;
        self.contains_known_hash(vm, key, hash)
    }

    /// [`Self::contains`] with the hash already known (read from this or another table).
    pub(crate) fn contains_known_hash<K: DictKey + ?Sized>(
        &self,
        vm: &VirtualMachine,
        key: &K,
        hash: PyHash,
    ) -> PyResult<bool> {
        let (lookup, _) = self.lookup(vm, key, hash)?;
        Ok(matches!(lookup, Lookup::Found { .. }))
    }

    pub(crate) fn add<K: DictKey + ?Sized>(&self, vm: &VirtualMachine, key: &K) -> PyResult<()> {
        let hash = key.key_hash(vm)?;
        self.add_known_hash(vm, key, hash)
    }

    /// [`Self::add`] with the hash already known. A wrong hash loses the key.
    pub(crate) fn add_known_hash<K: DictKey + ?Sized>(
        &self,
        vm: &VirtualMachine,
        key: &K,
        hash: PyHash,
    ) -> PyResult<()> {
        loop {
            let (lookup, version) = self.lookup(vm, key, hash)?;
            if let Lookup::Found { .. } = lookup {
                return Ok(());
            }
            let key = key.to_pyobject(vm);
            let mut table = self.write();
            if table.version == version {
                table.store(lookup, hash, key);
                return Ok(());
            }
        }
    }

    /// Remove `key`, raising `KeyError` when it is not there.
    pub(crate) fn delete<K: DictKey + ?Sized>(&self, vm: &VirtualMachine, key: &K) -> PyResult<()> {
        if self.delete_if_exists(vm, key)? {
            Ok(())
        } else {
            Err(vm.new_key_error(key.to_pyobject(vm)))
        }
    }

    pub(crate) fn delete_if_exists<K: DictKey + ?Sized>(
        &self,
        vm: &VirtualMachine,
        key: &K,
    ) -> PyResult<bool> {
        let hash = key.key_hash(vm)?;
        self.delete_if_exists_known_hash(vm, key, hash)
    }

    /// [`Self::delete_if_exists`] with the hash already known.
    pub(crate) fn delete_if_exists_known_hash<K: DictKey + ?Sized>(
        &self,
        vm: &VirtualMachine,
        key: &K,
        hash: PyHash,
    ) -> PyResult<bool> {
        let removed = loop {
            let (lookup, version) = self.lookup(vm, key, hash)?;
            let Lookup::Found { slot } = lookup else {
                return Ok(false);
            };
            let mut table = self.write();
            if table.version == version {
                break table.remove(slot);
            }
        };
        // Released after the lock: dropping a key can run Python.
        drop(removed);
        Ok(true)
    }

    /// Remove `key` if present, else add it (CPython's `symmetric_difference_update` step).
    pub(crate) fn delete_or_insert_known_hash(
        &self,
        vm: &VirtualMachine,
        key: &PyObject,
        hash: PyHash,
    ) -> PyResult<()> {
        let removed = loop {
            let (lookup, version) = self.lookup(vm, key, hash)?;
            let mut table = self.write();
            if table.version != version {
                continue;
            }
            match lookup {
                Lookup::Found { slot } => break table.remove(slot),
                missing => {
                    table.store(missing, hash, key.to_owned());
                    break None;
                }
            }
        };
        drop(removed);
        Ok(())
    }

    /// Empty the table back to its minimum size; the `pop` finger stays, as in CPython.
    pub(crate) fn clear(&self) {
        let removed = {
            let mut table = self.write();
            let slots = core::mem::replace(&mut table.slots, vec![Slot::Empty; MIN_SIZE]);
            table.fill = 0;
            table.used = 0;
            table.relaid();
            slots
        };
        drop(removed);
    }

    /// Take `other`'s contents (CPython's `set_swap_bodies`, which keeps the finger).
    pub(crate) fn replace_contents(&self, other: Self) {
        let replacement = other.inner.into_inner();
        let removed = {
            let mut table = self.write();
            let (finger, version, layout) = (table.finger, table.version, table.layout);
            let old = core::mem::replace(&mut *table, replacement);
            table.finger = finger;
            table.version = version;
            table.layout = layout;
            table.relaid();
            old
        };
        drop(removed);
    }

    /// Active slots of this table in order, its mask and whether it has dummies.
    fn snapshot(&self) -> Snapshot {
        let table = self.read();
        Snapshot {
            slots: table.slots.clone(),
            used: table.used,
            has_dummies: table.fill != table.used,
        }
    }

    /// CPython's `set_merge`: add every key of `other` in its slot order, growing first.
    pub(crate) fn merge(&self, vm: &VirtualMachine, other: &Self) -> PyResult<()> {
        if core::ptr::eq(self, other) {
            return Ok(());
        }
        let source = other.snapshot();
        if source.used == 0 {
            return Ok(());
        }
        {
            let mut table = self.write();
            table.reserve(source.used);
            if table.fill == 0 {
                table.fill_from(source);
                return Ok(());
            }
        }
        for slot in source.slots {
            if let Slot::Active { hash, key } = slot {
                self.add_known_hash(vm, &*key, hash)?;
            }
        }
        Ok(())
    }

    /// Grow for `incoming` keys about to be added (CPython does this before adding a dict's keys).
    pub(crate) fn reserve(&self, incoming: usize) {
        self.write().reserve(incoming);
    }

    /// After a `difference_update`: drop dummies when they are more than a quarter of the table.
    pub(crate) fn shrink_after_removals(&self) {
        let mut table = self.write();
        if table.fill - table.used > table.mask() / 4 {
            let target = growth_target(table.used);
            table.resize(target);
        }
    }

    /// CPython's `set_pop`: the first key at or after the finger, wrapping around.
    pub(crate) fn pop(&self) -> Option<PyObjectRef> {
        let removed = {
            let mut table = self.write();
            if table.used == 0 {
                return None;
            }
            let mask = table.mask();
            let mut slot = table.finger & mask;
            while !matches!(table.slots[slot], Slot::Active { .. }) {
                slot = (slot + 1) & mask;
            }
            table.finger = slot + 1;
            table.remove(slot)
        };
        removed
    }

    /// Keys in slot order.
    pub(crate) fn keys(&self) -> Vec<PyObjectRef> {
        self.read().active().map(|(key, _)| key.clone()).collect()
    }

    /// Keys with their stored hashes, in slot order.
    pub(crate) fn keys_with_hashes(&self) -> Vec<(PyObjectRef, PyHash)> {
        self.read()
            .active()
            .map(|(key, hash)| (key.clone(), hash))
            .collect()
    }

    /// Keys in slots from `position` on, in slot order (what an iterator has left).
    pub(crate) fn keys_from(&self, position: usize) -> Vec<PyObjectRef> {
        let table = self.read();
        table
            .slots
            .iter()
            .skip(position)
            .filter_map(|slot| match slot {
                Slot::Active { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect()
    }

    /// Fold the stored hashes under the read lock; `f` must not run Python.
    pub(crate) fn fold_hashes<Acc>(&self, init: Acc, f: impl FnMut(Acc, PyHash) -> Acc) -> Acc {
        self.read().active().map(|(_, hash)| hash).fold(init, f)
    }

    /// The first key in a slot at or after `position` and the position after it, if the set
    /// still has the size `old` (CPython's `setiter_iternext`). `project` runs under the lock.
    pub(crate) fn next_entry_checked<R>(
        &self,
        position: usize,
        old: &SetSize,
        project: impl FnOnce(&PyObject) -> R,
    ) -> Result<Option<(usize, R)>, SetChanged> {
        let table = self.read();
        if table.used != old.used {
            return Err(SetChanged);
        }
        let next = table
            .slots
            .iter()
            .enumerate()
            .skip(position)
            .find_map(|(slot, entry)| match entry {
                Slot::Active { key, .. } => Some((slot, key)),
                _ => None,
            });
        Ok(next.map(|(slot, key)| (slot + 1, project(key))))
    }
}

//! Pool maintenance: status, adding raid groups, replacing devices (resilver, finish),
//! scrubbing one block, and retiring replaced devices.
//!
//! Invariants: config changes bump the generation and go through the two-phase label
//! write; a device being replaced stays readable until the replace finishes.
//! Never: traverses live blocks (the block-tree layer does and calls back per block).

use super::*;

impl Spa {
    /// Pool status: health, groups, devices with error counters, space.
    pub fn status(&self) -> PoolStatus {
        let vdevs = self.vdevs.read().clone();
        let config = self.config.lock().clone();
        let mut groups: Vec<(u32, GroupStatus, Health)> = Vec::new();
        let mut worst = Health::Online;
        let mut msgs = Vec::new();
        for v in &vdevs {
            let (h, bad) = v.health();
            let pool_h = if v.log && h == Health::Faulted {
                Health::Degraded
            } else {
                h
            };
            worst = worst.max(pool_h);
            if h != Health::Online {
                msgs.push(format!(
                    "{} vdev {} {}: {}",
                    if v.log { "log" } else { "data" },
                    v.id,
                    h.as_str(),
                    bad.join(", ")
                ));
            }
            let kind = match v.kind {
                VdevKind::Disk => "stripe",
                VdevKind::Mirror => "mirror",
                VdevKind::Raidz(1) => "raidz",
                VdevKind::Raidz(_) => "raidz2",
            };
            let device = |l: &Arc<Leaf>, being_replaced: bool| {
                let (r, w, c) = l.errors();
                let state = l.state();
                DeviceStatus {
                    path: l.path.clone(),
                    guid: l.guid(),
                    state: state.as_str().into(),
                    reason: if let LeafState::Faulted(r) = state {
                        Some(r)
                    } else {
                        None
                    },
                    resilvering: l.is_untrusted(),
                    being_replaced,
                    read_errors: r,
                    write_errors: w,
                    checksum_errors: c,
                }
            };
            let mut devices: Vec<DeviceStatus> =
                v.children.read().iter().map(|l| device(l, false)).collect();
            devices.extend(v.replacing_leaves().iter().map(|l| device(l, true)));
            match groups
                .iter_mut()
                .find(|(g, gs, _)| *g == v.group && gs.kind == "stripe" && kind == "stripe")
            {
                Some((_, gs, gh)) => {
                    *gh = (*gh).max(h);
                    gs.health = gh.as_str().into();
                    gs.devices.extend(devices);
                }
                None => groups.push((
                    v.group,
                    GroupStatus {
                        kind: kind.into(),
                        log: v.log,
                        health: h.as_str().into(),
                        devices,
                    },
                    h,
                )),
            }
        }
        let space = self.space_stats();
        PoolStatus {
            name: config.name,
            guid: self.guid,
            health: worst,
            message: (!msgs.is_empty()).then(|| msgs.join("; ")),
            groups: groups.into_iter().map(|(_, g, _)| g).collect(),
            size_bytes: space.size_bytes,
            allocated_bytes: space.allocated_bytes,
            free_bytes: space.free_bytes,
            txg: self.last_root.lock().as_ref().map(|r| r.0),
        }
    }

    /// Latency histograms of every device (also the old device of a replace), for
    /// metrics. Cheap: atomic loads under the vdev list's read lock, no I/O.
    pub fn device_latency(&self) -> Vec<DeviceLatency> {
        let mut out = Vec::new();
        for v in self.vdevs.read().iter() {
            let leaves = v.children.read().clone();
            for l in leaves.iter().chain(v.replacing_leaves().iter()) {
                let (read, write) = l.latency();
                out.push(DeviceLatency {
                    path: l.path.clone(),
                    guid: l.guid(),
                    read,
                    write,
                });
            }
        }
        out
    }

    pub(super) fn space_stats(&self) -> SpaceStats {
        let mut s = SpaceStats::default();
        for v in self.vdevs.read().iter().filter(|v| !v.log) {
            let allocated = v.alloc.lock().allocated();
            s.size_bytes += v.usable(v.asize);
            s.allocated_bytes += v.usable(allocated);
        }
        s.free_bytes = s.size_bytes.saturating_sub(s.allocated_bytes);
        s
    }

    /// Add a raid group (or disks to a stripe pool: a `Stripe` spec) and rewrite labels.
    pub fn add_group(&self, group: GroupSpec<Arc<dyn Device>>) -> Result<(), SpaError> {
        validate_groups(std::slice::from_ref(&group), false)?;
        for d in &group.devices {
            if self.all_leaves().iter().any(|l| l.path == d.path()) {
                return Err(SpaError::InvalidLayout(format!(
                    "device {} is already in the pool",
                    d.path()
                )));
            }
        }
        // No sync may commit blocks on the new group before every label names it.
        let _sync = self.sync.lock();
        let mut config = self.config.lock().clone();
        if config.vdevs.len() + group.devices.len() > MAX_VDEVS {
            return Err(SpaError::InvalidLayout(format!(
                "a pool has at most {MAX_VDEVS} vdevs"
            )));
        }
        let new = build_vdevs(&mut config, vec![group], &self.opts)?;
        let new_leaves: Vec<Arc<Leaf>> =
            new.iter().flat_map(|v| v.children.read().clone()).collect();
        self.clear_rings(&new_leaves)?;
        config.generation += 1;
        *self.config.lock() = config;
        let new_guids: Vec<u64> = new_leaves.iter().map(|l| l.guid()).collect();
        self.vdevs.write().extend(new);
        self.write_labels_new_first(&new_guids)
    }

    /// Add a raid group given device paths.
    pub fn add_group_paths(&self, group: &GroupSpec<String>) -> Result<(), SpaError> {
        self.add_group(GroupSpec {
            kind: group.kind,
            devices: open_paths(&group.devices)?,
            log: group.log,
        })
    }

    /// Replace the device at `old_path` (or with that guid in hex) by `new`; the new device
    /// is untrusted for reads until [`Spa::finish_replace`]. The caller resilvers every live
    /// block with [`Spa::resilver_block`] in between.
    pub fn replace_device(&self, old: &str, new: Arc<dyn Device>) -> Result<(), SpaError> {
        // No sync may commit while the config is between old and new device.
        let _sync = self.sync.lock();
        let vdevs = self.vdevs.read().clone();
        let mut config = self.config.lock().clone();
        for v in &vdevs {
            let mut children = v.children.write();
            let Some(ci) = children
                .iter()
                .position(|l| l.path == old || format!("{:x}", l.guid()) == old)
            else {
                continue;
            };
            if v.kind == VdevKind::Disk {
                return Err(SpaError::InvalidState(format!("{old} is in a stripe group without redundancy; replace needs a mirror or raidz group")));
            }
            if v.replacing.read().iter().any(|o| o.is_some()) {
                return Err(SpaError::InvalidState(format!(
                    "a replace is already in progress in the group of {old}; finish it first"
                )));
            }
            if children.iter().any(|l| l.path == new.path()) {
                return Err(SpaError::InvalidLayout(format!(
                    "{} is already in the group",
                    new.path()
                )));
            }
            let vc = &mut config.vdevs[v.id as usize];
            let need = child_data_bytes(vc);
            let have = format::data_region_bytes(new.size());
            if have < need {
                return Err(SpaError::DeviceTooSmall {
                    path: new.path().to_owned(),
                    size_bytes: new.size(),
                    min_bytes: need + 4 * LABEL_BYTES,
                });
            }
            if !self.opts.force {
                if let Some(what) = probe_existing_data(new.as_ref()) {
                    return Err(SpaError::DeviceHasData {
                        path: new.path().to_owned(),
                        what,
                    });
                }
            }
            let guid = new_guid();
            let leaf = Leaf::open(new, guid, self.opts.io_timeout);
            leaf.set_untrusted(true);
            self.clear_rings(std::slice::from_ref(&leaf))?;
            let old_leaf = std::mem::replace(&mut children[ci], leaf.clone());
            // A device that still serves stays readable (and written) until the replace
            // finishes, so the group keeps its redundancy meanwhile.
            let keep = old_leaf.is_online();
            vc.children[ci] = ChildConfig {
                guid,
                path: leaf.path.clone(),
                resilvering: true,
                replacing: keep.then(|| ReplacedDevice {
                    guid: old_leaf.guid(),
                    path: old_leaf.path.clone(),
                }),
            };
            if keep {
                v.replacing.write()[ci] = Some(old_leaf);
            } else {
                old_leaf.set_removed();
            }
            drop(children);
            config.generation += 1;
            *self.config.lock() = config;
            return self.write_labels_new_first(&[guid]);
        }
        Err(SpaError::NoSuchDevice(old.to_owned()))
    }

    /// Rebuild the resilvering devices' share of one live block; returns bytes written.
    pub fn resilver_block(
        &self,
        dva: Dva,
        psize: u32,
        verify: Verify<'_>,
    ) -> Result<u64, SpaError> {
        let v = self
            .vdev(dva.vdev)
            .ok_or(SpaError::InvalidAddress { dva })?;
        v.resilver(dva, psize as u64, verify)
    }

    /// True while any device is resilvering.
    pub fn is_resilvering(&self) -> bool {
        self.all_leaves()
            .iter()
            .any(|l| l.is_untrusted() && l.is_online())
    }

    /// Same as [`Spa::finish_replace`]: used after resilvering a device that came back
    /// after missing writes.
    pub fn finish_resilver(&self) -> Result<(), SpaError> {
        self.finish_replace()
    }

    /// Resilver the allocator's own blocks (the space map chain), which the block-tree
    /// layer's traversal does not know; returns bytes written.
    pub fn resilver_internal(&self) -> Result<u64, SpaError> {
        let chain = self.sync.lock().chain.clone();
        let mut written = 0;
        for p in chain {
            let v = self
                .vdev(p.dva.vdev)
                .ok_or(SpaError::InvalidAddress { dva: p.dva })?;
            let want = p.checksum;
            written += v.resilver(p.dva, p.psize as u64, &|b: &[u8]| xxh3_64(b) == want)?;
        }
        Ok(written)
    }

    /// Scrub the allocator's own blocks (the space map chain); returns bytes repaired.
    pub fn scrub_internal(&self) -> Result<u64, SpaError> {
        let chain = self.sync.lock().chain.clone();
        let mut repaired = 0;
        for p in chain {
            let v = self
                .vdev(p.dva.vdev)
                .ok_or(SpaError::InvalidAddress { dva: p.dva })?;
            let want = p.checksum;
            repaired += v.scrub(p.dva, p.psize as u64, &|b: &[u8]| xxh3_64(b) == want)?;
        }
        Ok(repaired)
    }

    /// Mark resilvered devices trusted and persist it (after every live block was
    /// resilvered and a sync made those writes durable). Resilvers the space map chain
    /// first. Holds the sync lock so no sync changes the chain meanwhile.
    pub fn finish_replace(&self) -> Result<(), SpaError> {
        let _sync = self.sync.lock();
        let chain = _sync.chain.clone();
        for p in chain {
            let v = self
                .vdev(p.dva.vdev)
                .ok_or(SpaError::InvalidAddress { dva: p.dva })?;
            let want = p.checksum;
            v.resilver(p.dva, p.psize as u64, &|b: &[u8]| xxh3_64(b) == want)?;
        }
        self.flush_all()?;
        let mut config = self.config.lock().clone();
        let mut retired = Vec::new();
        for v in self.vdevs.read().iter() {
            for (ci, leaf) in v.children.read().iter().enumerate() {
                // A device still lost keeps its mark: it missed writes.
                if leaf.is_online() {
                    leaf.set_untrusted(false);
                    let child = &mut config.vdevs[v.id as usize].children[ci];
                    child.resilvering = false;
                    child.replacing = None;
                    retired.extend(v.replacing.write()[ci].take());
                }
            }
        }
        config.generation += 1;
        *self.config.lock() = config;
        // Old devices are wiped only once every label stops naming them.
        self.write_labels()?;
        for old in retired {
            retire_device(&old);
        }
        Ok(())
    }

    /// Check every copy or column of one block and repair bad ones; returns bytes repaired.
    pub fn scrub_block(&self, dva: Dva, psize: u32, verify: Verify<'_>) -> Result<u64, SpaError> {
        let v = self
            .vdev(dva.vdev)
            .ok_or(SpaError::InvalidAddress { dva })?;
        v.scrub(dva, psize as u64, verify)
    }
}

/// Wipe a replaced device's label config areas (best effort: it may be failing) so it is
/// never mistaken for a member again, and stop using it.
fn retire_device(leaf: &Arc<Leaf>) {
    if leaf.is_online() {
        let zeros = Arc::new(vec![0u8; CONFIG_AREA_BYTES as usize]);
        for lo in format::label_offsets(leaf.size()) {
            if let Ok(p) = leaf.submit_write(zeros.clone(), 0..zeros.len(), lo) {
                let _ = leaf.wait(p);
            }
        }
        let _ = leaf.flush();
    }
    leaf.set_removed();
}

// In-memory resource storage: current versions, full version history (with delete tombstones),
// undo logs for atomic transactions, and snapshot (de)serialisation.

function patientRefs(resource) {
  const out = [];
  for (const c of resource?.meta?.compartment ?? []) {
    if (c.reference?.startsWith('Patient/')) {
      out.push(c.reference);
    }
  }
  return out;
}

export class Store {
  constructor() {
    /** @type {Map<string, Map<string, object>>} live resources (never mutated after put) */
    this.current = new Map();
    /** @type {Map<string, Map<string, object[]>>} every version, oldest first; tombstones have `deleted: true` */
    this.history = new Map();
    /** @type {object[] | undefined} active undo log */
    this.undo = undefined;
    /** @type {Map<string, Map<string, Set<string>>>} type -> Patient reference -> ids (from meta.compartment) */
    this.patientIndex = new Map();
  }

  /** Sets (or clears) the live version of a resource, keeping the patient index in step. */
  setCurrent(type, id, resource) {
    const cur = this.typeMap(this.current, type, true);
    const old = cur.get(id);
    const idx = this.typeMap(this.patientIndex, type, true);
    for (const ref of patientRefs(old)) {
      idx.get(ref)?.delete(id);
    }
    if (resource) {
      cur.set(id, resource);
      for (const ref of patientRefs(resource)) {
        let set = idx.get(ref);
        if (!set) {
          set = new Set();
          idx.set(ref, set);
        }
        set.add(id);
      }
    } else {
      cur.delete(id);
    }
  }

  /** Ids of live resources of a type in a Patient compartment. */
  idsInPatientCompartment(type, patientRef) {
    return this.patientIndex.get(type)?.get(patientRef) ?? new Set();
  }

  typeMap(map, type, create) {
    let m = map.get(type);
    if (!m && create) {
      m = new Map();
      map.set(type, m);
    }
    return m;
  }

  get(type, id) {
    return this.current.get(type)?.get(id);
  }

  /** @returns true when the resource existed and was deleted (410 Gone on read). */
  isDeleted(type, id) {
    const versions = this.history.get(type)?.get(id);
    return Boolean(versions?.length && versions[versions.length - 1].deleted && !this.get(type, id));
  }

  versions(type, id) {
    return this.history.get(type)?.get(id) ?? [];
  }

  getVersion(type, id, versionId) {
    return this.versions(type, id).find((v) => !v.deleted && v.meta?.versionId === versionId);
  }

  all(type) {
    return this.current.get(type)?.values() ?? [].values();
  }

  types() {
    return [...this.current.keys()];
  }

  recordUndo(type, id) {
    if (this.undo) {
      this.undo.push({ type, id, prev: this.get(type, id), histLen: this.versions(type, id).length });
    }
  }

  put(resource) {
    const { resourceType: type, id } = resource;
    this.recordUndo(type, id);
    this.setCurrent(type, id, resource);
    const h = this.typeMap(this.history, type, true);
    let list = h.get(id);
    if (!list) {
      list = [];
      h.set(id, list);
    }
    list.push(resource);
  }

  remove(type, id, versionId, lastUpdated, author) {
    this.recordUndo(type, id);
    this.setCurrent(type, id, undefined);
    const h = this.typeMap(this.history, type, true);
    let list = h.get(id);
    if (!list) {
      list = [];
      h.set(id, list);
    }
    list.push({ deleted: true, resourceType: type, id, meta: { versionId, lastUpdated, author } });
  }

  /** Starts recording an undo log. Returns false if one is already active (nested transaction joins the outer). */
  begin() {
    if (this.undo) {
      return false;
    }
    this.undo = [];
    return true;
  }

  commit() {
    this.undo = undefined;
  }

  rollback() {
    const log = this.undo ?? [];
    this.undo = undefined;
    for (let i = log.length - 1; i >= 0; i--) {
      const { type, id, prev, histLen } = log[i];
      this.setCurrent(type, id, prev);
      const h = this.typeMap(this.history, type, true);
      const list = h.get(id);
      if (list) {
        list.length = histLen;
        if (!histLen) {
          h.delete(id);
        }
      }
    }
  }

  toJSON() {
    const history = {};
    for (const [type, m] of this.history) {
      history[type] = Object.fromEntries(m);
    }
    return { history };
  }

  load(data) {
    this.current.clear();
    this.history.clear();
    this.patientIndex.clear();
    for (const [type, byId] of Object.entries(data?.history ?? {})) {
      const h = this.typeMap(this.history, type, true);
      for (const [id, list] of Object.entries(byId)) {
        h.set(id, list);
        const last = list[list.length - 1];
        if (last && !last.deleted) {
          this.setCurrent(type, id, last);
        }
      }
    }
  }
}

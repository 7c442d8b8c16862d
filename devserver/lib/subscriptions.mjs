// Rest-hook Subscription matching and delivery, modelled on the Medplum server's
// packages/server/src/workers/subscription.ts (BullMQ queue replaced by an in-process queue).
// MEDPLUM_COMPAT=5.0 reproduces 5.0: only the first supported-interaction extension is read,
// no auto-disable, no audit-event destination (one AuditEvent resource per attempt), retries
// exactly doubling without jitter.
import { createReference, getExtension, getExtensionValue, resourceMatchesSubscriptionCriteria, stringify } from '@medplum/core';
import crypto from 'node:crypto';
import http from 'node:http';
import https from 'node:https';

const httpAgent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 64 });

/** POSTs the exact body bytes; resolves with the status code, rejects on network error or timeout. */
function post(url, headers, body, timeoutMs) {
  return new Promise((resolve, reject) => {
    let u;
    try {
      u = new URL(url);
    } catch (err) {
      reject(new TypeError('Invalid URL: ' + url));
      return;
    }
    const lib = u.protocol === 'https:' ? https : http;
    const payload = Buffer.from(body, 'utf8');
    const req = lib.request(
      u,
      {
        method: 'POST',
        agent: u.protocol === 'https:' ? httpsAgent : httpAgent,
        headers: { Accept: '*/*', 'User-Agent': 'node-fetch', ...headers, 'Content-Length': payload.length },
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
        res.on('error', () => resolve(res.statusCode));
      }
    );
    req.setTimeout(timeoutMs, () => {
      const err = new Error('The operation was aborted due to timeout');
      err.name = 'TimeoutError';
      req.destroy(err);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

export const EXT = {
  secret: 'https://www.medplum.com/fhir/StructureDefinition/subscription-secret',
  secretLegacy: 'https://www.medplum.com/fhir/StructureDefinition-subscriptionSecret',
  maxAttempts: 'https://medplum.com/fhir/StructureDefinition/subscription-max-attempts',
  successCodes: 'https://medplum.com/fhir/StructureDefinition/subscription-success-codes',
  auditDestination: 'https://medplum.com/fhir/StructureDefinition/subscription-audit-event-destination',
  interaction: 'https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction',
  fhirPath: 'https://medplum.com/fhir/StructureDefinition/fhir-path-criteria-expression',
};

const MAX_JOB_ATTEMPTS = 19; // queue-level cap, like Medplum's BullMQ `attempts`
const DEFAULT_ATTEMPTS = 4; // subscription-max-attempts default
const MAX_BACKOFF_MS = 8 * 60 * 60 * 1000;
const MAX_SUBSCRIPTIONS = 1000;
const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

export function isJobSuccessful(subscription, status) {
  const codes = getExtensionValue(subscription, EXT.successCodes);
  if (typeof codes !== 'string' || !codes.trim()) {
    return status >= 200 && status < 400;
  }
  for (const part of codes.split(',')) {
    const p = part.trim();
    if (p.includes('-')) {
      const [lo, hi] = p.split('-').map((x) => Number.parseInt(x, 10));
      if (status >= lo && status <= hi) {
        return true;
      }
    } else if (Number.parseInt(p, 10) === status) {
      return true;
    }
  }
  return false;
}

export class SubscriptionEngine {
  constructor(app) {
    this.app = app;
    this.queue = [];
    this.running = 0;
    this.timers = new Set();
    this.failures = new Map(); // subscription id -> timestamps of exhausted events
    this.closed = false;
    this.inflight = new Set();
  }

  get config() {
    return this.app.config;
  }

  get stats() {
    return this.app.stats.notifications;
  }

  get compat50() {
    return this.app.settings?.compat === '5.0';
  }

  /**
   * The Subscription as the criteria matcher of the emulated version sees it: @medplum/core 5.0
   * reads only the first `subscription-supported-interaction` extension (getExtension), 5.2
   * reads them all.
   */
  forMatching(subscription) {
    if (!this.compat50) {
      return subscription;
    }
    const ext = subscription.extension ?? [];
    const first = ext.findIndex((e) => e.url === EXT.interaction);
    if (first < 0) {
      return subscription;
    }
    return { ...subscription, extension: ext.filter((e, i) => e.url !== EXT.interaction || i === first) };
  }

  activeSubscriptions(projectId) {
    const out = [];
    for (const s of this.app.store.all('Subscription')) {
      if (s.status === 'active' && (!projectId || s.meta?.project === projectId)) {
        out.push(s);
        if (out.length >= MAX_SUBSCRIPTIONS) {
          break;
        }
      }
    }
    return out;
  }

  /** Called synchronously at commit for every created / updated / deleted resource. */
  onCommit(event) {
    const { resource } = event;
    if (resource.resourceType === 'AuditEvent') {
      return;
    }
    if (resource.resourceType === 'Subscription' && resource.channel?.type === 'websocket') {
      return;
    }
    const subscriptions = this.activeSubscriptions(event.projectId);
    if (!subscriptions.length) {
      return;
    }
    const commitTime = performance.now();
    for (const subscription of subscriptions) {
      if (event.subscription && event.subscription !== 'Subscription/' + subscription.id) {
        continue;
      }
      if (subscription.channel?.type !== 'rest-hook') {
        continue;
      }
      resourceMatchesSubscriptionCriteria({
        resource,
        subscription: this.forMatching(subscription),
        context: { interaction: event.interaction },
        getPreviousResource: async () => event.previous,
      })
        .then((matches) => {
          if (!matches) {
            return;
          }
          this.stats.matched++;
          this.enqueue({
            subscriptionId: subscription.id,
            resourceType: resource.resourceType,
            id: resource.id,
            versionId: resource.meta?.versionId,
            interaction: event.interaction,
            requestTime: event.requestTime,
            traceId: event.traceId,
            attemptsMade: 0,
            commitTime,
          });
        })
        .catch((err) => {
          if (this.config.verbose) {
            console.error('subscription criteria error', subscription.id, err?.message);
          }
        });
    }
  }

  enqueue(job) {
    if (this.closed) {
      return;
    }
    this.queue.push(job);
    this.pump();
  }

  pump() {
    while (!this.closed && this.running < this.config.subscriptionConcurrency && this.queue.length) {
      const job = this.queue.shift();
      this.running++;
      const p = this.exec(job)
        .catch((err) => console.error('subscription job error', err))
        .finally(() => {
          this.running--;
          this.inflight.delete(p);
          this.pump();
        });
      this.inflight.add(p);
    }
  }

  buildHeaders(job, subscription, resource, body) {
    const headers = {
      'Content-Type': 'application/fhir+json',
      'X-Medplum-Subscription': subscription.id,
      'X-Medplum-Interaction': job.interaction,
    };
    if (job.interaction === 'delete') {
      headers['X-Medplum-Deleted-Resource'] = `${resource.resourceType}/${resource.id}`;
    }
    for (const header of subscription.channel.header ?? []) {
      // Same split as the Medplum server: a second ':' truncates the value, a missing ':' throws.
      const [key, value] = header.split(/:/);
      headers[key.trim()] = value.trim();
    }
    const secret = getExtensionValue(subscription, EXT.secret) || getExtensionValue(subscription, EXT.secretLegacy);
    if (secret && typeof secret === 'string') {
      headers['X-Signature'] = crypto.createHmac('sha256', secret).update(body).digest('hex');
    }
    if (job.traceId) {
      headers['x-trace-id'] = job.traceId;
      if (TRACEPARENT.test(job.traceId)) {
        headers['traceparent'] = job.traceId;
      }
    }
    return headers;
  }

  async exec(job) {
    const store = this.app.store;
    const subscription = store.get('Subscription', job.subscriptionId);
    if (!subscription || subscription.channel?.type !== 'rest-hook' || subscription.status !== 'active') {
      this.stats.dropped_inactive++;
      return;
    }
    if (job.interaction !== 'delete') {
      const current = store.get(job.resourceType, job.id);
      if (!current) {
        this.stats.dropped_deleted++;
        return;
      }
      if (job.attemptsMade > 0 && current.meta?.versionId !== job.versionId) {
        this.stats.stale_retries_dropped++;
        return;
      }
    }
    const resource = store.getVersion(job.resourceType, job.id, job.versionId);
    if (!resource) {
      return;
    }
    const url = subscription.channel?.endpoint;
    if (!url || url.startsWith('Bot/')) {
      return;
    }
    const body = job.interaction === 'delete' ? '{}' : stringify(resource);
    let headers;
    try {
      headers = this.buildHeaders(job, subscription, resource, body);
    } catch (err) {
      // Medplum builds the headers outside its audit try/catch: the attempt fails without an AuditEvent.
      this.stats.failed_attempts++;
      this.handleFailure(job, subscription);
      return;
    }

    if (job.attemptsMade === 0 && job.commitTime !== undefined) {
      const latency = performance.now() - job.commitTime;
      this.stats.first_attempt_latency_ms_total += latency;
      this.stats.first_attempt_latency_ms_max = Math.max(this.stats.first_attempt_latency_ms_max, latency);
      this.stats.first_attempts++;
    }
    this.stats.attempts++;
    let success = false;
    let outcomeDesc;
    try {
      const status = await post(url, headers, body, this.config.subscriptionTimeoutMs);
      success = isJobSuccessful(subscription, status);
      outcomeDesc = `Attempt ${job.attemptsMade} received status ${status}`;
    } catch (err) {
      const reason = err?.name === 'TimeoutError' ? 'TimeoutError: The operation was aborted due to timeout' : String(err);
      outcomeDesc = `Attempt ${job.attemptsMade} received error ${reason}`;
    }
    if (this.closed) {
      return;
    }
    this.createAuditEvent(resource, job.requestTime, success ? '0' : '4', outcomeDesc, subscription, job.traceId);
    if (success) {
      this.stats.delivered++;
      this.failures.delete(subscription.id);
    } else {
      this.stats.failed_attempts++;
      this.handleFailure(job, subscription);
    }
  }

  handleFailure(job, subscription) {
    const ext = getExtension(subscription, EXT.maxAttempts)?.valueInteger;
    const maxAttempts = typeof ext === 'number' ? ext : DEFAULT_ATTEMPTS;
    if (job.attemptsMade < maxAttempts) {
      if (job.attemptsMade + 1 >= MAX_JOB_ATTEMPTS) {
        // The queue's own attempt cap is reached first: the job is dropped.
        this.stats.exhausted++;
        return;
      }
      const next = { ...job, attemptsMade: job.attemptsMade + 1 };
      // Doubling from the base (1 s by default: +0, 1, 3, 7, 15, 31 s ... after the event);
      // the 5.2 code adds ±10 % jitter and caps at 8 h, 5.0's queue backoff is exact.
      const base = this.config.subscriptionRetryBaseMs * 2 ** job.attemptsMade;
      const delay = this.compat50 ? base : Math.min(MAX_BACKOFF_MS, Math.round(base * (1 + (Math.random() * 0.2 - 0.1))));
      this.stats.retries_scheduled++;
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        this.enqueue(next);
      }, delay);
      this.timers.add(timer);
      return;
    }
    this.stats.exhausted++;
    this.recordExhaustedEvent(subscription);
  }

  recordExhaustedEvent(subscription) {
    const threshold = this.config.autoDisableAfter;
    if (this.compat50 || !threshold || threshold <= 0) {
      // 5.0 has no auto-disable: a failing Subscription stays active.
      return;
    }
    const windowMs = this.config.autoDisableWindowS * 1000;
    const now = Date.now();
    const list = (this.failures.get(subscription.id) ?? []).filter((t) => now - t <= windowMs);
    list.push(now);
    this.failures.set(subscription.id, list);
    if (list.length >= threshold) {
      this.autoDisable(subscription.id, list.length);
    }
  }

  autoDisable(subscriptionId, failureCount) {
    const repo = this.app.systemRepo();
    const current = this.app.store.get('Subscription', subscriptionId);
    if (!current || current.status !== 'active') {
      return;
    }
    const errorMessage = `Automatically disabled after ${failureCount} consecutive failed events in the last ${this.config.autoDisableWindowS} seconds`;
    try {
      repo
        .withTransaction(async () => {
          const updated = repo.writeImpl({ ...current, status: 'off', error: errorMessage }, current, false);
          this.createAuditEvent(updated, new Date().toISOString(), '8', errorMessage, updated, undefined, repo);
        })
        .catch((err) => console.error('auto-disable failed', err));
      this.failures.delete(subscriptionId);
      this.stats.auto_disabled++;
    } catch (err) {
      console.error('auto-disable failed', err);
    }
  }

  createAuditEvent(resource, startTime, outcome, outcomeDesc, subscription, traceId, repo) {
    const extension = traceId
      ? [
          {
            url: 'https://medplum.com/fhir/StructureDefinition/tracing',
            extension: [{ url: 'traceId', valueId: traceId.slice(0, 64) }],
          },
        ]
      : undefined;
    const entity = [resource, subscription].map((r) => ({
      what: createReference(r),
      role:
        r.resourceType === 'Patient'
          ? { code: '1', display: 'Patient' }
          : r.resourceType === 'Subscription'
            ? { code: '9', display: 'Subscriber' }
            : { code: '4', display: 'Domain' },
    }));
    const now = new Date().toISOString();
    const auditEvent = {
      resourceType: 'AuditEvent',
      meta: { project: subscription.meta?.project, account: subscription.meta?.account },
      period: { start: startTime, end: now },
      recorded: now,
      type: { code: 'transmit' },
      agent: [{ type: { text: subscription.resourceType }, requestor: false }],
      source: { observer: createReference(subscription) },
      entity,
      outcome,
      outcomeDesc,
      extension,
    };
    const destinations = this.compat50
      ? [] // 5.0 has no subscription-audit-event-destination: always a stored AuditEvent
      : (subscription.extension ?? []).filter((e) => e.url === EXT.auditDestination && e.valueCode).map((e) => e.valueCode);
    for (const destination of destinations.length ? destinations : ['resource']) {
      if (destination === 'resource') {
        try {
          (repo ?? this.app.systemRepo()).createSync(auditEvent);
          this.stats.audit_events++;
        } catch (err) {
          console.error('AuditEvent write failed', err?.message ?? err);
        }
      } else if (destination === 'log') {
        console.log(JSON.stringify(auditEvent));
      }
    }
  }

  async close() {
    this.closed = true;
    for (const t of this.timers) {
      clearTimeout(t);
    }
    this.timers.clear();
    this.queue.length = 0;
  }
}

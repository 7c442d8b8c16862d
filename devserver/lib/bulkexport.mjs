// Bulk Data export as Medplum serves it (packages/server/src/fhir/operations/export.ts,
// utils/bulkexporter.ts, fhir/bulkdata.ts):
//
//   GET|POST /fhir/R4/$export[?_since=...&_type=A,B]   → 202, Content-Location <base>fhir/R4/bulkdata/export/<id>
//   GET      /fhir/R4/bulkdata/export/<id>             → 202 (empty) while running; 200 manifest when done;
//                                                        404 once cancelled
//   DELETE   /fhir/R4/bulkdata/export/<id>             → 202 (cancel)
//   GET      /storage/<binary id>/<version>?Expires=..&Signature=..  → the NDJSON file (presigned, no token)
//
// Like Medplum: `Prefer: respond-async` is not required (the export is always asynchronous); every
// exportable type the caller may search is written, oldest `_lastUpdated` first, one NDJSON file
// per type (`application/fhir+ndjson`); `_since` keeps resources with `meta.lastUpdated >= _since`;
// the manifest says `requiresAccessToken: false` because its URLs are presigned. Binary,
// CodeSystem, SearchParameter, StructureDefinition, ValueSet, BulkDataExport, AsyncJob, AuditEvent
// and Medplum's protected types are never exported. Only the system-level export is served
// (Medplum also has Patient/$export and Group/<id>/$export).
import { accepted, AccessPolicyInteraction, badRequest, notFound, Operator, protectedResourceTypes } from '@medplum/core';
import crypto from 'node:crypto';
import { RequestRepository } from './repo.mjs';

const NDJSON = 'application/fhir+ndjson';
const UNEXPORTED = ['Binary', 'CodeSystem', 'SearchParameter', 'StructureDefinition', 'ValueSet', 'BulkDataExport', 'AsyncJob', 'AuditEvent'];
const URL_LIFETIME_S = 3600;
const STATUS_PATH = /^\/fhir\/R4\/bulkdata\/export\/([A-Za-z0-9-]{1,64})$/;
const STORAGE_PATH = /^\/storage\/([A-Za-z0-9-]{1,64})\/([A-Za-z0-9-]{1,64})$/;

export class BulkExports {
  constructor(app) {
    this.app = app;
    this.exports = new Map(); // id -> { projectId, status, request, requestTime, transactionTime, output }
    this.files = new Map(); // binary id -> { versionId, text }
    this.signingKey = crypto.randomBytes(32);
  }

  /** Adds the `$export` operation to the FHIR router. */
  register(router) {
    const kickOff = (req, repo) => this.start(req, repo);
    router.add('GET', '$export', kickOff, 'operation');
    router.add('POST', '$export', kickOff, 'operation');
  }

  handles(path) {
    return STATUS_PATH.test(path) || STORAGE_PATH.test(path);
  }

  async start(req, repo) {
    const base = this.app.config.baseUrl;
    const since = single(req.query?._since);
    if (since !== undefined && Number.isNaN(Date.parse(since))) {
      return [badRequest('Invalid _since')];
    }
    const types = single(req.query?._type)?.split(',').filter(Boolean);
    const id = crypto.randomUUID();
    const job = {
      projectId: repo.ctx.projectId,
      status: 'active',
      request: `${base}fhir/R4/${req.url}`,
      requestTime: new Date().toISOString(),
      output: [],
    };
    this.exports.set(id, job);
    // The caller's identity and access policy, without its request's quota or links.
    const exportRepo = new RequestRepository(repo.store, { ...repo.ctx, quota: undefined, searchUrl: undefined }, () => {});
    setImmediate(() => {
      this.run(job, exportRepo, types, since).catch((err) => {
        job.status = 'error';
        job.error = String(err?.message ?? err);
      });
    });
    return [accepted(`${base}fhir/R4/bulkdata/export/${id}`)];
  }

  async run(job, repo, types, since) {
    const outputs = [];
    for (const resourceType of repo.store.types().sort()) {
      if (job.status === 'cancelled') {
        return;
      }
      if (UNEXPORTED.includes(resourceType) || protectedResourceTypes.includes(resourceType)) {
        continue;
      }
      if ((types && !types.includes(resourceType)) || !repo.canType(resourceType, AccessPolicyInteraction.SEARCH)) {
        continue;
      }
      const filters = since ? [{ code: '_lastUpdated', operator: Operator.GREATER_THAN_OR_EQUALS, value: since }] : [];
      const matches = repo.matchAll({ resourceType, filters });
      if (!matches.length) {
        continue;
      }
      matches.sort((a, b) => String(a.meta?.lastUpdated).localeCompare(String(b.meta?.lastUpdated)));
      const text = matches.map((r) => JSON.stringify(repo.output(r))).join('\n') + '\n';
      const binaryId = crypto.randomUUID();
      const versionId = crypto.randomUUID();
      this.files.set(binaryId, { versionId, text, projectId: job.projectId });
      outputs.push({ type: resourceType, binaryId, versionId });
      await new Promise((r) => setImmediate(r)); // a long export must not stall the server
    }
    if (job.status === 'cancelled') {
      return;
    }
    job.output = outputs;
    job.transactionTime = new Date().toISOString();
    job.status = 'completed';
  }

  presignedUrl(binaryId, versionId) {
    const expires = Math.floor(Date.now() / 1000) + URL_LIFETIME_S;
    const signature = this.sign(binaryId, versionId, expires);
    return `${this.app.config.baseUrl}storage/${binaryId}/${versionId}?Expires=${expires}&Signature=${signature}`;
  }

  sign(binaryId, versionId, expires) {
    return crypto.createHmac('sha256', this.signingKey).update(`${binaryId}/${versionId}:${expires}`).digest('base64url');
  }

  /**
   * Serves the status and storage routes. `authenticate` gives the caller's context or throws
   * (the status route needs a token; presigned file URLs do not).
   */
  handle(req, res, url, authenticate, send) {
    const method = req.method;
    req.resume();
    const storage = STORAGE_PATH.exec(url.pathname);
    if (storage) {
      const [, binaryId, versionId] = storage;
      const file = this.files.get(binaryId);
      const expires = Number.parseInt(url.searchParams.get('Expires') ?? '', 10);
      const given = Buffer.from(url.searchParams.get('Signature') ?? '');
      const wanted = Buffer.from(this.sign(binaryId, versionId, expires));
      if (method !== 'GET' || !file || file.versionId !== versionId) {
        return send.outcome(notFound);
      }
      if (!(expires > Date.now() / 1000) || given.length !== wanted.length || !crypto.timingSafeEqual(given, wanted)) {
        res.writeHead(403, { 'Content-Type': 'text/plain' });
        return res.end('Forbidden');
      }
      res.writeHead(200, { 'Content-Type': NDJSON, 'Content-Length': Buffer.byteLength(file.text) });
      return res.end(file.text);
    }
    let ctx;
    try {
      ctx = authenticate();
    } catch (err) {
      return send.error(err);
    }
    const id = STATUS_PATH.exec(url.pathname)[1];
    const job = this.exports.get(id);
    if (!job || job.projectId !== ctx.projectId) {
      return send.outcome(notFound);
    }
    if (method === 'DELETE') {
      job.status = 'cancelled';
      res.writeHead(202);
      return res.end();
    }
    if (method !== 'GET') {
      return send.outcome(notFound);
    }
    if (job.status === 'cancelled') {
      return send.outcome(notFound);
    }
    if (job.status !== 'completed') {
      res.writeHead(202);
      return res.end();
    }
    return send.json(200, {
      transactionTime: job.transactionTime,
      request: job.request,
      requiresAccessToken: false,
      output: job.output.map((o) => ({ type: o.type, url: this.presignedUrl(o.binaryId, o.versionId) })),
      error: [],
      deleted: [],
    });
  }
}

function single(value) {
  return Array.isArray(value) ? value[0] : value;
}

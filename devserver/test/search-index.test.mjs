// The stand-in's lookup indexes (identifier, code, _tag, subject / patient, _lastUpdated) change
// only how candidates are found, never what a search returns: every query here must give the
// same resources as a full scan, before and after updates, deletes and a rolled-back transaction.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseSearchRequest } from '@medplum/core';
import { loadDefinitions } from '../lib/definitions.mjs';
import { RequestRepository } from '../lib/repo.mjs';
import { Store } from '../lib/store.mjs';

class ScanningRepository extends RequestRepository {
  candidates(resourceType) {
    return this.store.all(resourceType);
  }
}

const LOINC = 'http://loinc.org';
const SYS = 'https://fhir.starvit.health/sid/review-task';

function populate(repo) {
  const patients = [];
  for (let p = 0; p < 6; p++) {
    patients.push(repo.createSync({ resourceType: 'Patient', id: `p${p}`, name: [{ family: `F${p}` }] }));
  }
  const obs = [];
  for (let i = 0; i < 120; i++) {
    const p = patients[i % patients.length];
    obs.push(
      repo.createSync({
        resourceType: 'Observation',
        status: i % 7 === 0 ? 'preliminary' : 'final',
        code: { coding: [{ system: LOINC, code: ['29463-7', '8302-2', '2160-0'][i % 3] }], text: `t${i % 4}` },
        subject: { reference: `Patient/${p.id}` },
        identifier: i % 5 === 0 ? [{ system: 'urn:test:ext', value: `E-${i}` }] : undefined,
        meta: i % 2 ? { tag: [{ system: 'urn:test:tag', code: i % 4 === 1 ? 'a' : 'b' }] } : undefined,
      })
    );
  }
  for (let i = 0; i < 30; i++) {
    repo.createSync({
      resourceType: 'Task',
      status: ['requested', 'completed', 'cancelled'][i % 3],
      intent: 'proposal',
      identifier: [{ system: SYS, value: `k${i}` }],
      code: { coding: [{ system: 'urn:test:task', code: `bot${i % 2}.slot` }] },
      for: { reference: `Patient/p${i % 6}` },
      meta: { tag: [{ system: 'urn:test:tag', code: 'a' }] },
    });
  }
  return obs;
}

const QUERIES = [
  'Observation?identifier=urn:test:ext|E-10',
  'Observation?identifier=E-15',
  'Observation?identifier=URN:TEST:EXT|e-20',
  'Observation?identifier=urn:test:ext|E-10,urn:test:ext|E-25,missing',
  'Observation?identifier=|E-30',
  'Observation?identifier=urn:test:ext|',
  `Observation?code=${LOINC}|29463-7`,
  `Observation?code=${LOINC}|29463-7,${LOINC}|8302-2&subject=Patient/p1`,
  'Observation?code=2160-0&status=final',
  'Observation?code:text=t1',
  'Observation?code:not=2160-0&subject=Patient/p2',
  'Observation?_tag=urn:test:tag|a',
  'Observation?_tag=b',
  'Observation?subject=Patient/p3',
  'Observation?patient=Patient/p4&code=8302-2',
  'Observation?subject=Patient/p3,Patient/p4',
  `Task?identifier=${SYS}|k3,${SYS}|k4,${SYS}|k5&status=requested`,
  'Task?subject=Patient/p1&status=requested,ready&_tag=urn:test:tag|a',
  'Task?code=urn:test:task|bot1.slot&patient=Patient/p5',
  'Observation?_lastUpdated=gt2000-01-01',
  'Observation?_lastUpdated=lt2000-01-01',
  'Observation?_lastUpdated=ge2000-01-01T00:00:00%2B05:00&_lastUpdated=le2100-01-01',
];

function ids(repo, query) {
  const [type, qs] = query.split('?');
  const request = parseSearchRequest(`${type}?${qs}`);
  return repo.matchAll(request).map((r) => r.id).sort();
}

function assertSame(indexed, scanning, label) {
  for (const q of QUERIES) {
    assert.deepEqual(ids(indexed, q), ids(scanning, q), `${label}: ${q}`);
  }
}

loadDefinitions();

describe('search indexes', () => {
  test('every query returns what a full scan returns, through updates, deletes and rollback', async () => {
    const store = new Store();
    const ctx = { system: true, projectId: 'proj', author: { reference: 'Practitioner/x' } };
    const indexed = new RequestRepository(store, ctx, () => {});
    const scanning = new ScanningRepository(store, ctx, () => {});
    const obs = populate(indexed);
    assertSame(indexed, scanning, 'initial');
    assert.ok(ids(indexed, 'Observation?identifier=E-15').length === 1, 'the queries do match something');
    assert.ok(ids(indexed, 'Observation?_lastUpdated=gt2000-01-01').length === 120);

    // Updates that move resources between index keys, and deletes.
    for (const o of obs.slice(0, 40)) {
      await indexed.updateResource({
        ...o,
        code: { coding: [{ system: LOINC, code: '8302-2' }] },
        identifier: [{ system: 'urn:test:ext', value: `moved-${o.id}` }],
        subject: { reference: 'Patient/p0' },
        meta: { tag: [{ system: 'urn:test:tag', code: 'a' }] },
      });
    }
    for (const o of obs.slice(40, 50)) {
      await indexed.deleteResource('Observation', o.id);
    }
    assertSame(indexed, scanning, 'after updates and deletes');
    assert.equal(ids(indexed, 'Observation?identifier=E-5').length, 0, 'an old identifier is gone from the index');

    // A transaction rolled back leaves the indexes as they were.
    await assert.rejects(
      indexed.withTransaction(async () => {
        await indexed.createResource({
          resourceType: 'Observation',
          status: 'final',
          code: { coding: [{ system: LOINC, code: '2160-0' }] },
          identifier: [{ system: 'urn:test:ext', value: 'E-55' }],
          subject: { reference: 'Patient/p1' },
        });
        await indexed.deleteResource('Observation', obs[60].id);
        throw new Error('abort');
      })
    );
    assertSame(indexed, scanning, 'after rollback');
    assert.equal(ids(indexed, 'Observation?identifier=urn:test:ext|E-55').length, 1, 'the rolled-back create left no index entry');
  });
});

// Throughput / latency check for the stand-in.
//   node_modules/.bin/node bench.mjs            (starts its own server on a free port)
//   BENCH_URL=http://127.0.0.1:8103/ node_modules/.bin/node bench.mjs   (uses a running one; start it
//   with MEDPLUM_FHIR_QUOTA=0 MEDPLUM_RATE_LIMIT=0, else Medplum's quota of 500 writes a minute applies)
// Env: BENCH_N (operations per phase, default 2000), BENCH_CONCURRENCY (default 8).
import http from 'node:http';
import { client, startReceiver, startServer, subscription, token, CLIENTS } from './test/helpers.mjs';

const N = Number.parseInt(process.env.BENCH_N ?? '2000', 10);
const C = Number.parseInt(process.env.BENCH_CONCURRENCY ?? '8', 10);

const srv = process.env.BENCH_URL
  ? { baseUrl: process.env.BENCH_URL, stop: async () => {} }
  : await startServer({ MEDPLUM_FHIR_QUOTA: '0', MEDPLUM_RATE_LIMIT: '0' });
const fhir = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.service)).access_token);
http.globalAgent.keepAlive = true;

function pct(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function phase(name, n, concurrency, fn) {
  const lat = [];
  let i = 0;
  const t0 = performance.now();
  async function worker() {
    while (i < n) {
      const k = i++;
      const s = performance.now();
      await fn(k);
      lat.push(performance.now() - s);
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const secs = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  const line = `${name.padEnd(34)} n=${String(n).padEnd(5)} c=${String(concurrency).padEnd(2)} ${(n / secs).toFixed(0).padStart(6)} req/s  p50 ${pct(lat, 50).toFixed(2)} ms  p95 ${pct(lat, 95).toFixed(2)} ms`;
  console.log(line);
  return lat;
}

const ids = [];
const tag = 'bench-' + Date.now();
const obs = (k) => ({
  resourceType: 'Observation',
  status: 'final',
  code: { coding: [{ system: 'http://loinc.org', code: '29463-7' }], text: tag },
  subject: { reference: `Patient/bench-patient-${k % 50}` },
  effectiveDateTime: new Date().toISOString(),
  valueQuantity: { value: 70 + (k % 30), unit: 'kg', system: 'http://unitsofmeasure.org', code: 'kg' },
});

console.log(`medplum-devserver bench against ${srv.baseUrl} (Node ${process.version})`);
await phase('create Observation (sequential)', Math.min(N, 500), 1, async (k) => {
  const r = await fhir.post('Observation', obs(k));
  ids.push(r.body.id);
});
await phase('create Observation', N, C, async (k) => {
  const r = await fhir.post('Observation', obs(k));
  ids.push(r.body.id);
});
await phase('read Observation', N, C, async (k) => {
  await fhir.get('Observation/' + ids[k % ids.length]);
});
await phase('update Observation', Math.min(N, ids.length), C, async (k) => {
  const r = await fhir.get('Observation/' + ids[k]);
  await fhir.put('Observation/' + ids[k], { ...r.body, status: 'amended' });
});
await phase('search Observation?subject&code (1 of 50 patients)', Math.min(N, 1000), C, async (k) => {
  await fhir.get(`Observation?subject=Patient/bench-patient-${k % 50}&code=http://loinc.org|29463-7&_count=20&_sort=-date`);
});
await phase('search Observation?code (scan all, _count=20)', 50, C, async () => {
  await fhir.get('Observation?code=http://loinc.org|29463-7&_count=20');
});

// Notification latency: commit (response of the create) -> POST received by a local hook.
const rx = await startReceiver();
const sub = await fhir.post('Subscription', subscription(rx.url + '/bench', `Observation?code=urn:bench|${tag}`, [
  { url: 'https://www.medplum.com/fhir/StructureDefinition/subscription-secret', valueString: 'bench' },
]));
const M = 300;
const sent = new Map();
await phase('create Observation + notification', M, 1, async (k) => {
  const body = { ...obs(k), code: { coding: [{ system: 'urn:bench', code: tag }] } };
  const t = performance.now();
  const r = await fhir.post('Observation', body);
  sent.set(r.body.id, { t, committed: performance.now() });
});
await rx.waitFor((list) => list.filter((x) => x.path === '/bench').length >= M, 30000);
const notif = rx.received
  .filter((x) => x.path === '/bench')
  .map((x) => {
    const id = JSON.parse(x.body).id;
    return x.time - (performance.timeOrigin + sent.get(id).committed);
  })
  .sort((a, b) => a - b);
console.log(
  `notification delivered after create response   n=${M}  p50 ${pct(notif, 50).toFixed(1)} ms  p95 ${pct(notif, 95).toFixed(1)} ms  max ${notif[notif.length - 1].toFixed(1)} ms`
);
const stats = await (await fetch(srv.baseUrl + '_devserver/stats')).json();
console.log(
  `server-side commit -> first POST start: avg ${stats.notifications.first_attempt_latency_ms_avg.toFixed(2)} ms, max ${stats.notifications.first_attempt_latency_ms_max.toFixed(2)} ms`
);
await fhir.del('Subscription/' + sub.body.id).catch(() => {});
await rx.close();
await srv.stop();
process.exit(0);

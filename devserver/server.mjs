// Medplum (FHIR R4) local stand-in. Start with: node_modules/.bin/node server.mjs
import { createApp, readConfig } from './lib/app.mjs';

const config = readConfig();
const instance = createApp(config);
const source = instance.loadState();
const address = await instance.listen();
const port = typeof address === 'object' && address ? address.port : config.port;
if (config.port === 0 && !process.env.MEDPLUM_BASE_URL) {
  // An ephemeral port was requested: the issuer / base URL follows the port actually bound.
  config.baseUrl = `http://127.0.0.1:${port}/`;
}
console.log(`medplum-devserver listening on http://${config.host}:${port}/ (state from ${source})`);

let stopping = false;
async function shutdown(signal) {
  if (stopping) {
    return;
  }
  stopping = true;
  try {
    if (instance.saveSnapshot()) {
      console.log(`snapshot saved to ${config.snapshotPath}`);
    }
  } catch (err) {
    console.error('snapshot failed', err);
  }
  await Promise.race([instance.close(), new Promise((r) => setTimeout(r, 2000))]);
  process.exit(signal === 'SIGINT' ? 130 : 0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

// BullMQ baseline for zlh's queue benchmark (`zlh bench queue`).
//
// Measures, against a Redis on 127.0.0.1:$REDIS_PORT:
//   (a) enqueue one by one: JOBS sequential, awaited `queue.add` calls;
//   (b) enqueue batched:    `queue.addBulk` in chunks of 1000;
//   (c) processing:         one Worker (concurrency CONCURRENCY, no-op processor)
//                           draining JOBS pre-enqueued jobs.
// Prints one JSON line on stdout with the same keys as `zlh bench queue --json`.
//
// Options come from argv (--redis-port N, --jobs N, --concurrency N, --label S,
// also --key=value) or the env (REDIS_PORT, JOBS, CONCURRENCY, LABEL); argv wins.
// Normally run by scripts/bench-queue.sh, which installs bullmq + ioredis.

import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';
import { performance } from 'node:perf_hooks';
import { randomBytes } from 'node:crypto';

const HARD_TIMEOUT_MS = 5 * 60 * 1000;
const BULK_CHUNK = 1000;

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m) throw new Error(`unexpected argument: ${argv[i]}`);
    out[m[1]] = m[2] !== undefined ? m[2] : argv[++i];
  }
  return out;
}

function positiveInt(name, value) {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer, got ${value}`);
  return n;
}

const args = parseArgs(process.argv.slice(2));
const REDIS_PORT = positiveInt('REDIS_PORT', args['redis-port'] ?? process.env.REDIS_PORT ?? 6379);
const JOBS = positiveInt('JOBS', args.jobs ?? process.env.JOBS ?? 10000);
const CONCURRENCY = positiveInt('CONCURRENCY', args.concurrency ?? process.env.CONCURRENCY ?? 50);
const LABEL = args.label ?? process.env.LABEL ?? '';

// A hung run (Redis gone, a lost event) must not stall the caller forever.
// unref: the timer alone does not keep the process alive once we are done.
setTimeout(() => {
  console.error(`bullmq-bench: hard timeout after ${HARD_TIMEOUT_MS / 1000}s (label=${LABEL})`);
  process.exit(2);
}, HARD_TIMEOUT_MS).unref();

// BullMQ requires maxRetriesPerRequest: null on connections it may block on.
const connOpts = { host: '127.0.0.1', port: REDIS_PORT, maxRetriesPerRequest: null };
// One shared connection for the Queue objects; the Worker gets its own options
// so BullMQ creates (and closes) its blocking connection itself.
const connection = new IORedis(connOpts);

// Unique names per run so leftovers from an earlier run can never be counted.
const runId = `${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
const queues = [];

async function freshQueue(suffix) {
  const q = new Queue(`zlh-bench-${runId}-${suffix}`, { connection });
  await q.waitUntilReady();
  await q.obliterate({ force: true });
  queues.push(q);
  return q;
}

const rate = (n, ms) => Math.round((n / (ms / 1000)) * 10) / 10;
const noopData = {};

async function enqueueOneByOne() {
  const q = await freshQueue('one');
  const t0 = performance.now();
  for (let i = 0; i < JOBS; i++) await q.add('noop', noopData);
  return rate(JOBS, performance.now() - t0);
}

async function enqueueBatched(q) {
  const t0 = performance.now();
  for (let done = 0; done < JOBS; done += BULK_CHUNK) {
    const n = Math.min(BULK_CHUNK, JOBS - done);
    await q.addBulk(Array.from({ length: n }, () => ({ name: 'noop', data: noopData })));
  }
  return rate(JOBS, performance.now() - t0);
}

// Default job options on purpose: BullMQ then keeps completed jobs in Redis
// (no removeOnComplete), just as zlh's durable queue keeps finished rows, so
// neither side gets to skip the bookkeeping of a finished job.
async function processAll(q) {
  const counts = await q.getJobCounts('waiting');
  if (counts.waiting !== JOBS) throw new Error(`expected ${JOBS} waiting jobs, found ${counts.waiting}`);

  const worker = new Worker(q.name, async () => {}, {
    connection: connOpts,
    concurrency: CONCURRENCY,
    autorun: false, // start the clock right before the worker starts fetching
  });
  let completed = 0;
  const done = new Promise((resolve, reject) => {
    worker.on('completed', () => {
      if (++completed === JOBS) resolve();
    });
    worker.on('failed', (job, err) => reject(new Error(`job ${job?.id} failed: ${err?.message}`)));
    worker.on('error', reject);
  });
  const t0 = performance.now();
  worker.run().catch(() => {}); // resolves only when the worker closes; errors surface via 'error'
  await done;
  const ms = performance.now() - t0;
  await worker.close();
  return rate(JOBS, ms);
}

async function main() {
  const enqueueOne = await enqueueOneByOne();
  const batchedQueue = await freshQueue('proc');
  const enqueueBatch = await enqueueBatched(batchedQueue);
  const process_ = await processAll(batchedQueue);

  console.log(JSON.stringify({
    system: 'bullmq',
    label: LABEL,
    jobs: JOBS,
    concurrency: CONCURRENCY,
    enqueue_one_by_one_jobs_per_s: enqueueOne,
    enqueue_batched_jobs_per_s: enqueueBatch,
    process_jobs_per_s: process_,
  }));
}

let exitCode = 0;
try {
  await main();
} catch (err) {
  console.error(`bullmq-bench: ${err?.stack ?? err}`);
  exitCode = 1;
} finally {
  // Leave the (throwaway) Redis clean and close everything so Node exits by itself.
  for (const q of queues) {
    await q.obliterate({ force: true }).catch(() => {});
    await q.close().catch(() => {});
  }
  await connection.quit().catch(() => connection.disconnect());
}
process.exitCode = exitCode;

/*
 * Test helper: a "test host" of its own for a backend or a Redis: a network namespace joined to
 * ours by a veth pair, with an address of its own, and a link the test can cut so that packets
 * are DROPPED (no RST, no ICMP: a peer that has vanished, not one that refuses), then mend.
 *
 * It must never touch an interface, address or namespace it did not create, and must never leave
 * one behind: remove() deletes the veth pair and the namespace; a process 'exit' hook does the same
 * for every test host still there (and SIGKILLs what runs inside); a namespace left by a run that
 * was killed outright (SIGKILL: no exit hook) is found by the pid in its name and removed by the
 * next run's startTestHost().
 *
 * Facts this rests on (measured on these machines, 2026-11, kernel 6.18, iproute2 6.1):
 * - `tc qdisc ... netem loss 100%` is NOT available (no sch_netem: "Specified qdisc kind is
 *   unknown"), nor is iptables/nft. Cutting is therefore `ip link set PEER down` on the test host's
 *   side: our side loses carrier, its connected route stays, and what we send is dropped.
 * - Neighbour entries on both sides are made permanent: otherwise ARP fails ~3 s after the cut and
 *   a connect() gets EHOSTUNREACH (a refusal of sorts) instead of hanging like a dropped SYN.
 * - Cutting OUR side (`ip link set HOSTDEV down`) would remove the connected route, and packets
 *   for the test host would follow the default route out of the machine: never done here.
 * - `ip netns del` alone can leave our end of the veth behind for a long time (a socket in the
 *   dying namespace keeps it alive): the veth is deleted explicitly first (deleting one end
 *   deletes both).
 *
 * Names and addresses are unique per test host and per run: an index in 0..16383 picks the /30
 * 10.231.(i>>6).((i&63)*4) (ours .1, the test host's .2) and names the veth ends oqfIh / oqfIn;
 * `ip link add` of an existing name fails, so two parallel runs can never take the same index.
 * The namespace is oqfault-PID-I.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { run, signal, waitExit } from './supervised.js';

export const IP = '/usr/sbin/ip';
const SETPRIV = '/usr/bin/setpriv';
/** 10.231.0.0/16: not a range this machine (or a test of ours) uses; checked per /30 anyway. */
const NET_PREFIX = '10.231';
const INDEXES = 16384;
const NAME_PREFIX = 'oqfault-';
/** Attempts at a free index before giving up (a clash needs another run holding that index). */
const MAX_ATTEMPTS = 20;

/** Why test hosts cannot be made here, or false. */
export function netnsUnavailable(): string | false {
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  if (!existsSync(IP)) return `${IP} missing: apt-get install iproute2 (or run scripts/install-deps.sh)`;
  return false;
}

export interface TestHost {
  /** The namespace's name (oqfault-PID-I). */
  name: string;
  /** The test host's address: what a frontend is pointed at. */
  address: string;
  /** Our end's address. */
  localAddress: string;
  /**
   * Start `command` inside the test host (argv[0] a path or a name on PATH), output appended to
   * `outputFile`. It gets SIGKILL when the test process dies (PR_SET_PDEATHSIG, via setpriv when
   * present) and from remove().
   */
  spawn(command: string[], outputFile: string): ChildProcess;
  /** Cut the link: from now on every packet either way is dropped. */
  cut(): Promise<void>;
  /** Mend the link: packets flow again (TCP connections that waited carry on). */
  mend(): Promise<void>;
  /** SIGKILL what runs inside, delete the veth pair and the namespace. Idempotent. */
  remove(): Promise<void>;
}

interface Created {
  ns: string;
  hostDev: string;
  children: Set<ChildProcess>;
}

const live = new Set<Created>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of live) removeSync(c);
  });
}

/** Synchronous: also usable from the 'exit' hook. Errors are ignored (already gone). */
function removeSync(c: Created): void {
  for (const child of c.children) signal(child, 'SIGKILL');
  for (const args of [['link', 'del', c.hostDev], ['netns', 'del', c.ns]]) {
    try {
      execFileSync(IP, args, { stdio: 'ignore', timeout: 5000 });
    } catch {
      /* already gone */
    }
  }
  live.delete(c);
}

async function ip(...args: string[]): Promise<string> {
  const r = await run(IP, args, { timeoutMs: 5000 });
  if (r.code !== 0) throw new Error(`ip ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Namespaces (and their veths) left by runs whose process is gone: removed. */
async function removeLeftovers(): Promise<void> {
  const list = await ip('netns', 'list');
  for (const line of list.split('\n')) {
    const m = new RegExp(`^${NAME_PREFIX}(\\d+)-(\\d+)\\b`).exec(line);
    if (!m || alive(Number(m[1]))) continue;
    removeSync({ ns: `${NAME_PREFIX}${m[1]}-${m[2]}`, hostDev: `oqf${m[2]}h`, children: new Set() });
  }
}

function subnet(index: number): { local: string; remote: string; base: string } {
  const third = index >> 6;
  const fourth = (index & 63) * 4;
  return { base: `${NET_PREFIX}.${third}.${fourth}`, local: `${NET_PREFIX}.${third}.${fourth + 1}`, remote: `${NET_PREFIX}.${third}.${fourth + 2}` };
}

async function macOf(dev: string, ns?: string): Promise<string> {
  const out = await ip(...(ns ? ['-n', ns] : []), '-br', 'link', 'show', 'dev', dev);
  const mac = /\b([0-9a-f]{2}(?::[0-9a-f]{2}){5})\b/.exec(out)?.[1];
  if (!mac) throw new Error(`no MAC address for ${dev}: ${out}`);
  return mac;
}

/** Create a test host; resolves once its link is up. */
export async function startTestHost(): Promise<TestHost> {
  const why = netnsUnavailable();
  if (why) throw new Error(`netns test helper: ${why}`);
  installExitHook();
  await removeLeftovers();
  for (let attempt = 1; ; attempt++) {
    if (attempt > MAX_ATTEMPTS) throw new Error(`netns test helper: no free index in ${MAX_ATTEMPTS} attempts`);
    const index = Math.floor(Math.random() * INDEXES);
    const net = subnet(index);
    // Someone (not a test host of ours) uses this range here: pick another.
    if ((await ip('-o', 'addr', 'show', 'to', `${net.base}/30`)).trim() !== '') continue;
    const c: Created = { ns: `${NAME_PREFIX}${process.pid}-${index}`, hostDev: `oqf${index}h`, children: new Set() };
    const peerDev = `oqf${index}n`;
    await ip('netns', 'add', c.ns);
    try {
      await ip('link', 'add', c.hostDev, 'type', 'veth', 'peer', 'name', peerDev, 'netns', c.ns);
    } catch (err) {
      // The index is another run's (its veth name exists): ours is only the namespace.
      await ip('netns', 'del', c.ns).catch(() => {});
      if (!/exists/i.test((err as Error).message)) throw err;
      continue;
    }
    live.add(c);
    try {
      await ip('addr', 'add', `${net.local}/30`, 'dev', c.hostDev);
      await ip('-n', c.ns, 'addr', 'add', `${net.remote}/30`, 'dev', peerDev);
      await ip('-n', c.ns, 'link', 'set', 'lo', 'up');
      await ip('-n', c.ns, 'link', 'set', peerDev, 'up');
      await ip('link', 'set', c.hostDev, 'up');
      await ip('neigh', 'replace', net.remote, 'lladdr', await macOf(peerDev, c.ns), 'dev', c.hostDev, 'nud', 'permanent');
      await ip('-n', c.ns, 'neigh', 'replace', net.local, 'lladdr', await macOf(c.hostDev), 'dev', peerDev, 'nud', 'permanent');
    } catch (err) {
      removeSync(c);
      throw err;
    }
    return testHost(c, peerDev, net);
  }
}

function testHost(c: Created, peerDev: string, net: { local: string; remote: string }): TestHost {
  let removed = false;
  return {
    name: c.ns,
    address: net.remote,
    localAddress: net.local,
    spawn(command, outputFile) {
      const inside = [IP, 'netns', 'exec', c.ns, ...command];
      const [cmd, ...args] = existsSync(SETPRIV) ? [SETPRIV, '--pdeathsig', 'KILL', '--', ...inside] : inside;
      const fd = openSync(outputFile, 'a');
      let child: ChildProcess;
      try {
        child = spawn(cmd!, args, { stdio: ['ignore', fd, fd] });
      } finally {
        closeSync(fd);
      }
      child.unref();
      child.on('error', () => {});
      c.children.add(child);
      child.once('exit', () => c.children.delete(child));
      return child;
    },
    async cut() {
      await ip('-n', c.ns, 'link', 'set', peerDev, 'down');
    },
    async mend() {
      await ip('-n', c.ns, 'link', 'set', peerDev, 'up');
      // Its connected route comes back with the link; the permanent neighbour entry stayed.
    },
    async remove() {
      if (removed) return;
      removed = true;
      const children = [...c.children];
      for (const child of children) signal(child, 'SIGKILL');
      await Promise.all(children.map((child) => waitExit(child, 2000)));
      removeSync(c);
    },
  };
}

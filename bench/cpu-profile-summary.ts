/*
 * Summarises V8 .cpuprofile files (node --cpu-prof): the functions with the most self time, the
 * most inclusive ("total") time, and self time by file.
 *
 *   node --import tsx bench/cpu-profile-summary.ts FILE.cpuprofile... [--top 30] [--from-ms N]
 *
 * --from-ms skips the first N ms of each profile (start-up), so a profile of a server under load
 * shows the steady state. Paths are shown relative to the working directory; node_modules and
 * node: internals keep their names.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface Row {
  name: string;
  ms: number;
  pct: number;
}

export interface ProfileSummary {
  file: string;
  /** Busy time sampled (every share is of this). */
  sampledMs: number;
  idleMs: number;
  self: Row[];
  total: Row[];
  byFile: Row[];
}

function frameName(f: CallFrame): string {
  const fn = f.functionName || '(anonymous)';
  if (!f.url) return fn;
  let where = f.url.replace(/^file:\/\//, '');
  if (where.startsWith('/')) where = path.relative(process.cwd(), where) || where;
  return `${fn} ${where}:${f.lineNumber + 1}`;
}

function fileOf(f: CallFrame): string {
  if (!f.url) return f.functionName || '(native)';
  const where = f.url.replace(/^file:\/\//, '');
  const nm = where.lastIndexOf('node_modules/');
  if (nm !== -1) return where.slice(nm + 'node_modules/'.length).split('/')[0]! + ' (node_modules)';
  return where.startsWith('/') ? path.relative(process.cwd(), where) : where;
}

export function summarise(file: string, fromMs = 0): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of profile.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  const files = new Map<string, number>();
  let t = profile.startTime;
  let sampled = 0;
  let idle = 0;
  // timeDeltas[i] is the time since the previous sample; it is charged to sample i.
  for (let i = 0; i < profile.samples.length; i++) {
    const delta = profile.timeDeltas[i] ?? 0;
    t += delta;
    if ((t - profile.startTime) / 1000 < fromMs) continue;
    const us = Math.max(0, delta);
    const node = byId.get(profile.samples[i]!)!;
    // Waiting for I/O is not work: kept out of every share (a server profiled across a whole
    // bench run is idle while the other targets are measured).
    if (node.callFrame.functionName === '(idle)') {
      idle += us;
      continue;
    }
    const name = frameName(node.callFrame);
    self.set(name, (self.get(name) ?? 0) + us);
    sampled += us;
    const f = fileOf(node.callFrame);
    files.set(f, (files.get(f) ?? 0) + us);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const n = byId.get(id)!;
      if (n.callFrame.functionName === '(root)') break;
      const key = frameName(n.callFrame);
      if (seen.has(key)) continue; // recursion: count once
      seen.add(key);
      total.set(key, (total.get(key) ?? 0) + us);
    }
  }
  const rows = (m: Map<string, number>): Row[] =>
    [...m.entries()]
      .map(([name, us]) => ({ name, ms: Math.round(us / 100) / 10, pct: sampled ? Math.round((us / sampled) * 1000) / 10 : 0 }))
      .sort((a, b) => b.ms - a.ms);
  return { file, sampledMs: Math.round(sampled / 1000), idleMs: Math.round(idle / 1000), self: rows(self), total: rows(total), byFile: rows(files) };
}

function print(s: ProfileSummary, top: number): void {
  console.log(`\n== ${s.file}: ${s.sampledMs} ms busy (shares below are of this), ${s.idleMs} ms idle`);
  const show = (title: string, rows: Row[]) => {
    console.log(`\n${title}`);
    for (const r of rows.slice(0, top)) console.log(`${r.pct.toFixed(1).padStart(6)}%  ${r.ms.toFixed(1).padStart(9)} ms  ${r.name}`);
  };
  show('self time by function', s.self);
  show('total (inclusive) time by function', s.total);
  show('self time by file', s.byFile);
}

function main(): void {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { top: { type: 'string', default: '30' }, 'from-ms': { type: 'string', default: '0' } },
  });
  if (positionals.length === 0) {
    console.error('usage: cpu-profile-summary FILE.cpuprofile... [--top 30] [--from-ms N]');
    process.exitCode = 64;
    return;
  }
  for (const file of positionals) print(summarise(file, Number(values['from-ms'])), Number(values.top));
}

main();

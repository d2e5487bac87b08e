/*
 * The house's one rule (ARCHITECTURE.md): imports only point down, and never in a circle.
 *
 *   cli.ts > commands/ > faces/ > core/ > cache/ > sources/ > stores/ > quota.ts > runtime/ > config/
 *
 * A file may import its own folder's files, and any folder below its own; the faces never import
 * each other (each renders verdicts in its own words; faces/decision-line.ts is theirs to share).
 * Read from the source text, as `tsc` resolves relative imports: a new file in a new folder must
 * be given its place here, or this test names it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src');

/** Higher imports lower; the first matching prefix wins. */
const LAYERS: [prefix: string, rank: number][] = [
  ['cli.ts', 9],
  ['commands/', 8],
  ['faces/', 7],
  ['core/', 6],
  ['cache/', 5],
  ['sources/', 4],
  ['stores/', 3],
  ['quota.ts', 2],
  ['runtime/', 1],
  ['config/', 0],
];

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []));
}

function rankOf(rel: string): number {
  const layer = LAYERS.find(([prefix]) => rel === prefix || rel.startsWith(prefix));
  if (!layer) throw new Error(`${rel} is in no layer: give its folder a place in test/layers.test.ts`);
  return layer[1];
}

/** faces/policy/codec.ts -> faces/policy; core/verdict.ts -> core; cli.ts -> cli.ts */
const folderOf = (rel: string) => (rel.startsWith('faces/') ? rel.split('/').slice(0, 2).join('/') : rel.includes('/') ? rel.split('/')[0]! : rel);

function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)['"](\.{1,2}\/[^'"]+)['"]/g)) {
    out.push(path.relative(SRC, path.resolve(path.dirname(file), m[1]!)).replace(/\.js$/, '.ts'));
  }
  return out;
}

const graph = new Map(files(SRC).map((f) => [path.relative(SRC, f), importsOf(f)]));

test('every import in src/ points down a layer, or stays in its folder; faces never import each other', () => {
  const wrong: string[] = [];
  for (const [from, imports] of graph) {
    for (const to of imports) {
      if (!graph.has(to)) {
        wrong.push(`${from} -> ${to}: no such file`);
        continue;
      }
      const same = folderOf(from) === folderOf(to);
      const shared = to === 'faces/decision-line.ts' && from.startsWith('faces/');
      if (!same && !shared && rankOf(to) >= rankOf(from)) wrong.push(`${from} -> ${to}`);
    }
  }
  assert.deepEqual(wrong, []);
});

test('no import circle, however long', () => {
  const circles: string[] = [];
  const state = new Map<string, 'open' | 'done'>();
  const walk = (file: string, trail: string[]) => {
    if (state.get(file) === 'done') return;
    if (state.get(file) === 'open') {
      circles.push([...trail.slice(trail.indexOf(file)), file].join(' -> '));
      return;
    }
    state.set(file, 'open');
    for (const to of graph.get(file) ?? []) walk(to, [...trail, file]);
    state.set(file, 'done');
  };
  for (const file of graph.keys()) walk(file, []);
  assert.deepEqual(circles, []);
});

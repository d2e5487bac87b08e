/*
 * Listener addresses in the MTAs' own spelling.
 *
 * Postfix writes inet:host:port, inet:[ipv6]:port and unix:/path; Sendmail writes inet:port@host,
 * inet6:port@host and local:/path (accepted here so a milter line can be copied from sendmail.mc).
 * Parsing only: opening sockets is the servers' job.
 */
import { execFileSync } from 'node:child_process';
import { isIP } from 'node:net';

export type ListenAddress =
  | { kind: 'inet'; host: string; port: number; text: string }
  /** group: who may connect besides the owner (the *.socket_group setting); empty: the process's. */
  | { kind: 'unix'; path: string; text: string; group?: string };

/** @param socketGroup the group a unix socket is given (ignored for inet). */
export function parseListenAddress(text: string, socketGroup = ''): ListenAddress | string {
  const spec = text.trim();
  let m = /^(?:unix|local):(\/.+)$/.exec(spec);
  if (m) return { kind: 'unix', path: m[1]!, text: spec, group: socketGroup };
  m = /^inet6?:(\d+)@(.+)$/.exec(spec) ?? null;
  if (m) return inet(m[2]!.replace(/^\[(.*)\]$/, '$1'), m[1]!, spec);
  m = /^(?:inet:)?\[([^\]]+)\]:(\d+)$/.exec(spec);
  if (m) return inet(m[1]!, m[2]!, spec);
  m = /^(?:inet:)?([^:[\]]+):(\d+)$/.exec(spec);
  if (m) return inet(m[1]!, m[2]!, spec);
  return `"${text}" is not inet:HOST:PORT, inet:[IPV6]:PORT, unix:/PATH or inet:PORT@HOST`;
}

function inet(host: string, portText: string, text: string): ListenAddress | string {
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 0 || port > 65535) return `"${text}" has the port ${portText}, outside 0-65535`;
  if (host !== 'localhost' && isIP(host) === 0 && !/^[a-z0-9.-]+$/i.test(host)) return `"${text}" has the host "${host}", not an address or name`;
  return { kind: 'inet', host, port, text };
}

/** A group name (as in /etc/group, or NSS) or number -> its number; throws a sentence saying why not. */
export function groupId(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  if (!/^[A-Za-z_][A-Za-z0-9_.-]*\$?$/.test(group)) throw new Error(`"${group}" is not a group name`);
  let entry: string;
  try {
    // getent asks NSS, as Postfix and Sendmail do: the group may live in LDAP, not /etc/group.
    entry = execFileSync('getent', ['group', group], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch (err) {
    const status = (err as { status?: number }).status;
    throw new Error(status === 2 ? `there is no group "${group}"` : `cannot look up the group "${group}": ${(err as Error).message}`);
  }
  const gid = Number(entry.split(':')[2]);
  if (!Number.isInteger(gid)) throw new Error(`getent gave no number for the group "${group}"`);
  return gid;
}

/*
 * A Postfix-like policy client: one persistent connection, one request at a time.
 */
import net from 'node:net';

export class PolicyClient {
  private buffer = '';
  private waiting: ((reply: string) => void) | null = null;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      this.buffer += text;
      const end = this.buffer.indexOf('\n\n');
      if (end !== -1 && this.waiting) {
        const reply = this.buffer.slice(0, end);
        this.buffer = this.buffer.slice(end + 2);
        const w = this.waiting;
        this.waiting = null;
        w(reply);
      }
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) => socket.on('close', () => resolve()));
  }

  /** address: "inet:127.0.0.1:PORT" or "unix:/path". */
  static connect(address: string): Promise<PolicyClient> {
    const socket = address.startsWith('unix:')
      ? net.connect(address.slice(5))
      : net.connect(Number(address.slice(address.lastIndexOf(':') + 1)), address.slice(5, address.lastIndexOf(':')).replace(/^\[|\]$/g, ''));
    return new Promise((resolve, reject) => {
      socket.once('connect', () => resolve(new PolicyClient(socket)));
      socket.once('error', reject);
    });
  }

  /** Sends a request and returns the action (without "action="). Rejects if the server closes first. */
  ask(attributes: Record<string, string | number>): Promise<string> {
    const body = Object.entries(attributes).map(([k, v]) => `${k}=${v}\n`).join('') + '\n';
    return this.send(body);
  }

  send(raw: string | Buffer): Promise<string> {
    return new Promise((resolve, reject) => {
      this.waiting = (reply) => resolve(reply.replace(/^action=/, ''));
      void this.closed.then(() => reject(new Error('policy server closed the connection without a reply')));
      this.socket.write(raw);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

export const rcpt = (recipient: string, extra: Record<string, string | number> = {}) => ({
  request: 'smtpd_access_policy',
  protocol_state: 'RCPT',
  protocol_name: 'ESMTP',
  client_address: '192.0.2.10',
  sender: 'sender@example.net',
  queue_id: '',
  recipient,
  size: 0,
  ...extra,
});

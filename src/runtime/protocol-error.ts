/*
 * A client broke a wire protocol: what every decoder throws, with a code for the log (and, later,
 * for counting) and a sentence a person can act on. The server that catches it drops that one
 * connection and logs it; nothing else is affected. Each face names its own codes.
 */
export class ProtocolError<Code extends string> extends Error {
  constructor(
    readonly code: Code,
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

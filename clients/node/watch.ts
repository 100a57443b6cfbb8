// One WatchNotifications stream, read in the background from the moment it opens, so that a
// notification that arrives before the caller asks for it (the outbox may deliver it before
// PlaceOrder has answered) is kept rather than missed.
import type {
  Notification,
  WatchNotificationsResponse,
} from "../../gen/ts/shop/notifications/v1/notifications_pb.js";

type Open = (
  signal: AbortSignal,
  onHeader: () => void,
) => AsyncIterable<WatchNotificationsResponse>;

export class Watch {
  /** Resolves when the server has sent the stream's headers: the subscription is in place. */
  readonly subscribed: Promise<void>;
  private readonly received: Notification[] = [];
  private readonly abort = new AbortController();
  /** Rejects once the stream has ended, however it ended: nothing more will arrive. */
  private readonly ended: Promise<never>;
  private arrived: () => void = () => {};

  constructor(open: Open) {
    let headers: () => void = () => {};
    const headersArrived = new Promise<void>((resolve) => (headers = resolve));
    const read = this.read(open(this.abort.signal, headers));
    this.ended = read.then(() => Promise.reject(new Error("the stream ended")));
    // Seen by whoever waits for a notification; not an unhandled rejection after `stop`.
    this.ended.catch(() => {});
    // The stream failing before its headers (UNAUTHENTICATED, say) rejects `subscribed`.
    this.subscribed = Promise.race([headersArrived, this.ended]);
  }

  /** The first notification about `orderId`; rejects after `withinMs`, or if the stream fails. */
  async notificationFor(orderId: string, withinMs: number): Promise<Notification> {
    const deadline = Date.now() + withinMs;
    for (;;) {
      const found = this.received.find((notification) => notification.orderId === orderId);
      if (found) return found;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`no notification for order ${orderId} within ${withinMs / 1000} s`);
      }
      let timer: NodeJS.Timeout | undefined;
      const next = new Promise<void>((resolve) => {
        this.arrived = resolve;
        timer = setTimeout(resolve, left);
      });
      try {
        await Promise.race([next, this.ended]);
      } finally {
        clearTimeout(timer);
      }
    }
  }

  stop(): void {
    this.abort.abort();
  }

  private async read(stream: AsyncIterable<WatchNotificationsResponse>): Promise<void> {
    for await (const { notification } of stream) {
      if (notification) this.received.push(notification);
      this.arrived();
    }
  }
}

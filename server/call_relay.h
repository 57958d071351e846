// Relays a task's replies to a gRPC callback reactor, so that a call waiting for its
// task holds no thread: the reply channel tells the relay when a message or the end
// arrives (on the task's thread), and the relay passes it on (a streaming call: one
// write in flight at a time), then finishes the call with the channel's status.
//
// The handler sets the relay up before it submits the task; if the task cannot be
// submitted (or the call is refused before), it closes the channel with the error,
// which finishes the call the same way.
// Thread-safety: the channel's producer, gRPC's reactions and the handler may call in
// concurrently; a relay's state is locked, and it touches its reactor last of all
// when it finishes it (the reactor may be gone right after).
#ifndef APESERVE_SERVER_CALL_RELAY_H_
#define APESERVE_SERVER_CALL_RELAY_H_

#include <grpcpp/support/server_callback.h>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "server/reply_channel.h"

namespace apeserve::server {

// Turns the channel's final status into the call's (FinishCall: counted and logged).
using CallFinisher = std::function<grpc::Status(const absl::Status& status)>;

// A server-streaming call's reactor: writes every message of the channel in order,
// then finishes with its status. Once a write fails (the client went away), the rest
// is drained unsent; the task itself notices the cancellation before its next step.
template <typename Message>
class StreamRelay final : public grpc::ServerWriteReactor<Message> {
 public:
  // `observe` (may be null) sees each message before it is written.
  static StreamRelay* Start(std::shared_ptr<ReplyChannel<Message>> channel,
                            std::function<void(const Message&)> observe, CallFinisher finish) {
    auto* relay = new StreamRelay();
    const std::shared_ptr<State> state = relay->state_;
    state->reactor = relay;
    state->channel = std::move(channel);
    state->observe = std::move(observe);
    state->finish = std::move(finish);
    state->channel->Listen([state] { state->Pump(); });
    state->Pump();  // what arrived before
    return relay;
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      state_->writing = false;
      if (!ok) state_->broken = true;
    }
    state_->Pump();
  }

  void OnDone() override { delete this; }

 private:
  struct State {
    void Pump() {
      for (;;) {
        bool write = false;
        absl::Status status;
        {
          std::lock_guard<std::mutex> lock(mutex);
          if (writing || finishing) return;
          std::optional<Message> next = channel->TryReceive();
          if (next.has_value()) {
            if (observe) observe(*next);
            if (broken) continue;
            current = *std::move(next);
            writing = true;
            write = true;
          } else if (channel->drained()) {
            finishing = true;
            status = channel->status();
          } else {
            return;  // more to come: the channel calls again
          }
        }
        // Outside the lock: gRPC may react on this thread.
        if (write) {
          reactor->StartWrite(&current);
        } else {
          channel->Listen(nullptr);         // the channel no longer keeps this state alive
          reactor->Finish(finish(status));  // last: the reactor may be gone after it
        }
        return;
      }
    }

    std::mutex mutex;
    StreamRelay* reactor = nullptr;
    std::shared_ptr<ReplyChannel<Message>> channel;
    std::function<void(const Message&)> observe;
    CallFinisher finish;
    Message current;  // the write in flight
    bool writing = false;
    bool broken = false;
    bool finishing = false;
  };

  StreamRelay() = default;

  const std::shared_ptr<State> state_ = std::make_shared<State>();
};

// Relays the channel to a call that answers once (a unary reactor, or a client-
// streaming one that has read its request): `take` gets every message in order (under
// the relay's lock, so one at a time), then the reactor is finished with `finish` of
// the channel's status.
template <typename Reactor, typename Message>
void RelayToUnary(Reactor* reactor, const std::shared_ptr<ReplyChannel<Message>>& channel,
                  std::function<void(Message&&)> take, CallFinisher finish) {
  struct State {
    void Pump() {
      absl::Status status;
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (finished) return;
        while (std::optional<Message> next = channel->TryReceive()) take(*std::move(next));
        if (!channel->drained()) return;
        finished = true;
        status = channel->status();
      }
      channel->Listen(nullptr);         // the channel no longer keeps this state alive
      reactor->Finish(finish(status));  // last: the reactor may be gone after it
    }

    std::mutex mutex;
    Reactor* reactor = nullptr;
    std::shared_ptr<ReplyChannel<Message>> channel;
    std::function<void(Message&&)> take;
    CallFinisher finish;
    bool finished = false;
  };
  auto state = std::make_shared<State>();
  state->reactor = reactor;
  state->channel = channel;
  state->take = std::move(take);
  state->finish = std::move(finish);
  channel->Listen([state] { state->Pump(); });
  state->Pump();  // what arrived before
}

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_CALL_RELAY_H_

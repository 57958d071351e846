// How a task running on the scheduler's thread hands its replies to the RPC handler
// that waits for them: messages as they are produced, then one final status. The
// handler either blocks in Receive(), or is told (Listen) and takes them with
// TryReceive(), as a gRPC callback reactor does.
// Thread-safety: one producer (the task, on one thread at a time) and one consumer.
#ifndef APESERVE_SERVER_REPLY_CHANNEL_H_
#define APESERVE_SERVER_REPLY_CHANNEL_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"

namespace apeserve::server {

template <typename Message>
class ReplyChannel {
 public:
  void Send(Message message) {
    std::function<void()> listener;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (closed_) return;
      messages_.push_back(std::move(message));
      ready_.notify_one();
      listener = listener_;
    }
    if (listener) listener();
  }

  // The end: no message follows. Only the first call counts.
  void Close(absl::Status status) {
    std::function<void()> listener;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (closed_) return;
      closed_ = true;
      status_ = std::move(status);
      ready_.notify_one();
      listener = listener_;
    }
    if (listener) listener();
  }

  // Calls `ready` after each Send and at Close, on the producer's thread, outside the
  // channel's lock: the consumer then takes what is there with TryReceive. Set before
  // the producer starts.
  void Listen(std::function<void()> ready) {
    std::lock_guard<std::mutex> lock(mutex_);
    listener_ = std::move(ready);
  }

  // The next message if one is waiting.
  std::optional<Message> TryReceive() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (messages_.empty()) return std::nullopt;
    Message message = std::move(messages_.front());
    messages_.pop_front();
    return message;
  }

  // Closed, and every message taken: status() is final.
  bool drained() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return closed_ && messages_.empty();
  }

  // The next message, or nullopt once the channel is closed and drained (then
  // status() is final).
  std::optional<Message> Receive() {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait(lock, [this] { return closed_ || !messages_.empty(); });
    if (messages_.empty()) return std::nullopt;
    Message message = std::move(messages_.front());
    messages_.pop_front();
    return message;
  }

  absl::Status status() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return status_;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Message> messages_ ABSL_GUARDED_BY(mutex_);
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;
  std::function<void()> listener_ ABSL_GUARDED_BY(mutex_);
  absl::Status status_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_REPLY_CHANNEL_H_

#include "scheduler.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace cramfast {
namespace {

constexpr std::int64_t kEmpty = -1;
// A report entry saying the device stopped this job for a reason outside the stop rule.
constexpr std::int64_t kFailedOnDevice = -2;
constexpr std::int64_t kMaxI64 = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kMinI64 = std::numeric_limits<std::int64_t>::min();

[[noreturn]] void refuse(const std::string& message) { throw std::invalid_argument(message); }

Policy parse_policy(const std::string& name) {
    if (name == "fifo") return Policy::Fifo;
    if (name == "bucketed") return Policy::Bucketed;
    refuse("unknown scheduler policy '" + name + "': choose 'fifo' or 'bucketed'");
}

// The stop rule for one evaluation (see scheduler.h).  Returns the reason, or nullptr if the
// job goes on; in that case s advances to the next evaluation's index.
const char* evaluate(std::int64_t& s, std::int64_t& best_correct, std::int64_t& best_step,
                     std::int64_t n_correct, std::int64_t n_tokens, std::int64_t max_steps,
                     std::int64_t patience) {
    if (n_correct > best_correct) {
        best_correct = n_correct;
        best_step = s;
    }
    if (n_correct == n_tokens - 1) return "lossless";
    if (s - best_step >= patience) return "stalled";
    if (s >= max_steps) return "max_steps";
    ++s;
    return nullptr;
}

}  // namespace

Scheduler::Scheduler(int max_slots, std::int64_t token_budget, std::int64_t n_mem,
                     const std::string& policy, std::int64_t max_passes)
    : max_slots_(max_slots),
      token_budget_(token_budget),
      n_mem_(n_mem),
      policy_(parse_policy(policy)),
      max_passes_(max_passes < 0 ? max_slots : max_passes) {
    if (max_slots < 1) refuse("max_slots must be >= 1, got " + std::to_string(max_slots));
    if (n_mem < 0) refuse("n_mem must be >= 0, got " + std::to_string(n_mem));
    if (token_budget < 1) refuse("token_budget must be >= 1, got " + std::to_string(token_budget));
    slots_.resize(static_cast<std::size_t>(max_slots));
}

void Scheduler::add_job(std::int64_t job_id, std::int64_t n_tokens, std::int64_t max_steps,
                        std::int64_t patience, std::int64_t s, std::int64_t best_correct,
                        std::int64_t best_step) {
    const std::string job = "job " + std::to_string(job_id);
    if (job_id < 0) refuse(job + ": job_id must be >= 0 (-1 marks an empty slot)");
    if (active_ids_.count(job_id)) refuse(job + " is already queued or running");
    if (n_tokens < 1) refuse(job + ": n_tokens must be >= 1, got " + std::to_string(n_tokens));
    if (max_steps < 0) refuse(job + ": max_steps must be >= 0, got " + std::to_string(max_steps));
    if (patience < 1) refuse(job + ": patience must be >= 1, got " + std::to_string(patience));
    // Compared without adding, so huge values cannot overflow.
    if (n_tokens > token_budget_ - n_mem_)
        refuse(job + " needs n_tokens + n_mem = " + std::to_string(n_tokens) + " + " +
               std::to_string(n_mem_) + " tokens but token_budget is " +
               std::to_string(token_budget_));
    if (best_step < 0 || best_step > s || s > max_steps)
        refuse(job + ": resumed counters need 0 <= best_step <= s <= max_steps, got best_step " +
               std::to_string(best_step) + ", s " + std::to_string(s));
    if (best_correct < -1 || best_correct >= n_tokens)
        refuse(job + ": best_correct must lie in [-1, n_tokens - 1), got " +
               std::to_string(best_correct));
    const std::int64_t seq = next_seq_++;
    queue_by_age_.emplace(
        seq, Job{job_id, n_tokens, max_steps, patience, seq, s, best_correct, best_step});
    queue_by_length_.emplace(n_tokens, seq);
    active_ids_.insert(job_id);
}

std::int64_t Scheduler::padded_length() const {
    std::int64_t padded = 0;
    for (const Slot& slot : slots_)
        if (slot.occupied) padded = std::max(padded, slot.job.n_tokens);
    return padded;
}

int Scheduler::n_occupied() const {
    return static_cast<int>(std::count_if(slots_.begin(), slots_.end(),
                                          [](const Slot& slot) { return slot.occupied; }));
}

std::size_t Scheduler::running() const { return static_cast<std::size_t>(n_occupied()); }

// Whether one more job of n_tokens keeps (n_occupied + 1) * (padded + n_mem) <= budget,
// padded being raised to n_tokens if it is longer than every running job.
bool Scheduler::fits(std::int64_t n_tokens, std::int64_t padded, int n_occupied) const {
    const std::int64_t per_slot = token_budget_ / (n_occupied + 1);  // floor keeps it exact
    return std::max(n_tokens, padded) + n_mem_ <= per_slot;
}

// Passes are counted for the oldest job only, so that a long queue does not age as a whole
// (which would turn "bucketed" into FIFO once every queued job is old enough).
bool Scheduler::is_starving(const Job& oldest) const {
    return oldest.seq == oldest_seq_ && oldest_passes_ > max_passes_;
}

// After a plan: the (now) oldest queued job was passed over if a younger job started.
void Scheduler::count_pass(const std::vector<std::int64_t>& started_seqs) {
    if (queue_by_age_.empty()) return;
    const std::int64_t oldest = queue_by_age_.begin()->first;
    const bool passed = std::any_of(started_seqs.begin(), started_seqs.end(),
                                    [oldest](std::int64_t seq) { return seq > oldest; });
    if (oldest != oldest_seq_) {
        oldest_seq_ = oldest;
        oldest_passes_ = 0;
    }
    oldest_passes_ += passed ? 1 : 0;
}

// The seq of the queued job to start next, or nothing if none may start now.
std::optional<std::int64_t> Scheduler::choose_next(std::int64_t padded, int n_occupied) const {
    const Job& oldest = queue_by_age_.begin()->second;
    // FIFO never skips the head.  Under "bucketed", a starving head is never skipped either
    // (nothing else starts until it fits, so the batch drains for it), and an empty batch
    // starts from the oldest job, which then anchors the bucket.
    const bool take_oldest =
        policy_ == Policy::Fifo || n_occupied == 0 || is_starving(oldest);
    if (!take_oldest) return least_padding(padded, n_occupied);
    if (fits(oldest.n_tokens, padded, n_occupied)) return oldest.seq;
    return std::nullopt;
}

// The fitting queued job that adds the least padding waste: a job of n <= padded wastes
// padded - n of its own slot; a job of n > padded wastes n - padded in each of the
// n_occupied running slots.  Ties go to the older job.  O(log queue) via queue_by_length_.
std::optional<std::int64_t> Scheduler::least_padding(std::int64_t padded, int n_occupied) const {
    if (!fits(padded, padded, n_occupied)) return std::nullopt;  // not even a short job fits
    std::optional<std::int64_t> best_seq;
    std::int64_t best_waste = kMaxI64;
    auto consider = [&](std::int64_t waste, std::int64_t seq) {
        if (!best_seq || waste < best_waste || (waste == best_waste && seq < *best_seq)) {
            best_waste = waste;
            best_seq = seq;
        }
    };
    const auto first_longer = queue_by_length_.upper_bound({padded, kMaxI64});
    if (first_longer != queue_by_length_.begin()) {
        const std::int64_t length = std::prev(first_longer)->first;  // longest n <= padded
        const auto oldest = queue_by_length_.lower_bound({length, kMinI64});
        consider(padded - length, oldest->second);
    }
    if (first_longer != queue_by_length_.end() && fits(first_longer->first, padded, n_occupied))
        consider(n_occupied * (first_longer->first - padded), first_longer->second);
    return best_seq;
}

// Moves a queued job into the lowest free slot; returns that slot.
int Scheduler::start(std::int64_t seq) {
    const auto queued = queue_by_age_.find(seq);
    const Job job = queued->second;
    queue_by_age_.erase(queued);
    queue_by_length_.erase({job.n_tokens, seq});
    const auto free_slot = std::find_if(slots_.begin(), slots_.end(),
                                        [](const Slot& slot) { return !slot.occupied; });
    *free_slot = Slot{true, job, job.s, job.best_correct, job.best_step};
    return static_cast<int>(free_slot - slots_.begin());
}

Plan Scheduler::plan() {
    std::int64_t padded = padded_length();
    int occupied = n_occupied();
    std::vector<int> new_slots;
    std::vector<std::int64_t> started_seqs;
    while (occupied < max_slots_ && !queue_by_age_.empty()) {
        const std::optional<std::int64_t> seq = choose_next(padded, occupied);
        if (!seq) break;
        const int slot = start(*seq);
        new_slots.push_back(slot);
        started_seqs.push_back(*seq);
        padded = std::max(padded, slots_[static_cast<std::size_t>(slot)].job.n_tokens);
        ++occupied;
    }
    count_pass(started_seqs);
    plan_cost_ = occupied * (padded + n_mem_);
    return describe(std::move(new_slots));
}

Plan Scheduler::describe(std::vector<int> new_slots) const {
    Plan out;
    out.slot_jobs.reserve(slots_.size());
    for (const Slot& slot : slots_) out.slot_jobs.push_back(slot.occupied ? slot.job.id : kEmpty);
    out.new_slots = std::move(new_slots);
    out.padded_length = padded_length();
    out.n_occupied = n_occupied();
    return out;
}

std::vector<Finished> Scheduler::report(const std::int64_t* history, std::size_t rows,
                                        std::size_t cols) {
    if (rows < 1) refuse("report needs at least one row of n_correct values");
    if (cols != slots_.size())
        refuse("report rows must have max_slots = " + std::to_string(slots_.size()) +
               " entries, got " + std::to_string(cols));
    // Work on a copy so that a bad entry leaves the scheduler unchanged.
    std::vector<Slot> next = slots_;
    std::vector<Finished> out;
    for (std::size_t row = 0; row < rows; ++row) {
        for (std::size_t i = 0; i < cols; ++i) {
            Slot& slot = next[i];
            if (!slot.occupied) continue;
            const std::int64_t n_correct = history[row * cols + i];
            if (n_correct == kFailedOnDevice) {  // e.g. a non-finite loss: no rule applies
                out.push_back(Finished{slot.job.id, static_cast<int>(i), "nonfinite", slot.s,
                                       slot.best_step, slot.best_correct});
                slot.occupied = false;
                continue;
            }
            if (n_correct < 0 || n_correct > slot.job.n_tokens - 1)
                refuse("report row " + std::to_string(row) + " slot " + std::to_string(i) +
                       ": n_correct " + std::to_string(n_correct) + " of job " +
                       std::to_string(slot.job.id) + " is outside [0, " +
                       std::to_string(slot.job.n_tokens - 1) + "]");
            const char* reason = evaluate(slot.s, slot.best_correct, slot.best_step, n_correct,
                                          slot.job.n_tokens, slot.job.max_steps,
                                          slot.job.patience);
            if (!reason) continue;
            out.push_back(Finished{slot.job.id, static_cast<int>(i), reason, slot.s,
                                   slot.best_step, slot.best_correct});
            slot.occupied = false;
        }
    }
    slots_ = std::move(next);
    for (const Finished& job : out) active_ids_.erase(job.job_id);
    finished_ += out.size();
    evaluations_ += static_cast<std::int64_t>(rows);
    token_steps_ += static_cast<std::int64_t>(rows) * plan_cost_;
    return out;
}

bool Scheduler::cancel(std::int64_t job_id) {
    if (!active_ids_.erase(job_id)) return false;
    for (Slot& slot : slots_) {
        if (slot.occupied && slot.job.id == job_id) {
            slot.occupied = false;
            ++cancelled_;
            return true;
        }
    }
    for (auto it = queue_by_age_.begin(); it != queue_by_age_.end(); ++it) {
        if (it->second.id == job_id) {
            queue_by_length_.erase({it->second.n_tokens, it->first});
            queue_by_age_.erase(it);
            ++cancelled_;
            return true;
        }
    }
    return true;  // unreachable: an active id is always queued or running
}

std::vector<Finished> Scheduler::report(const std::vector<std::vector<std::int64_t>>& history) {
    std::vector<std::int64_t> flat;
    flat.reserve(history.size() * slots_.size());
    for (const auto& row : history) {
        if (row.size() != slots_.size())
            refuse("report rows must have max_slots = " + std::to_string(slots_.size()) +
                   " entries, got " + std::to_string(row.size()));
        flat.insert(flat.end(), row.begin(), row.end());
    }
    return report(flat.data(), history.size(), slots_.size());
}

}  // namespace cramfast

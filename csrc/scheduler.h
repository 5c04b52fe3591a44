// Continuous-batching scheduler for cramming: which text ("job") is optimized in which
// batch slot, and when a job stops.  Plain C++17 + STL; the Python binding is bindings.cpp.
//
// Life of a job: add_job() queues it; plan() moves queued jobs into free slots; the device
// then runs k evaluations (each followed by one optimizer update for jobs still running) and
// report() receives the k x max_slots matrix of n_correct values, applies the stop rule and
// frees the slots of finished jobs.  The next plan() refills them.
//
// Stop rule (must agree bit for bit with cramfast/engine/optim.py on the device): a job is evaluated at
// s = 0, 1, 2, ... (s = optimizer updates applied so far).  At each evaluation, with
// n_correct the number of its n_tokens - 1 predicted tokens that are right:
//     if n_correct > best_correct: best_correct = n_correct, best_step = s   (best_correct = -1)
//     stop "lossless"  if n_correct == n_tokens - 1
//     stop "stalled"   if s - best_step >= patience
//     stop "max_steps" if s >= max_steps
// (first match wins); otherwise update s + 1 is applied and evaluation s + 1 follows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

namespace cramfast {

enum class Policy { Fifo, Bucketed };

// The batch layout after plan(): what the device must run until the next plan().
struct Plan {
    std::vector<std::int64_t> slot_jobs;  // job id per slot, -1 for an empty slot
    std::vector<int> new_slots;           // slots whose job started in this plan (reset mem/AdamW)
    std::int64_t padded_length = 0;       // max n_tokens over occupied slots (0 if none)
    int n_occupied = 0;
};

// One job that stopped, as returned by report().
struct Finished {
    std::int64_t job_id = -1;
    int slot = -1;
    std::string reason;               // "lossless" | "stalled" | "max_steps" | "nonfinite" (settings.StopReason)
    std::int64_t steps = 0;           // s at the evaluation where it stopped
    std::int64_t best_step = 0;
    std::int64_t best_correct = -1;
};

class Scheduler {
public:
    // policy: "fifo" (strict arrival order, head-of-line blocking) or "bucketed" (prefer the
    // queued job that adds the least padding).  Starvation guard of "bucketed": once the
    // oldest queued job has been passed over (a younger job started while it stayed queued)
    // in more than max_passes plans while being the oldest, it is taken before any other job.
    // max_passes < 0 means max_slots.  Throws std::invalid_argument on a bad argument.
    Scheduler(int max_slots, std::int64_t token_budget, std::int64_t n_mem,
              const std::string& policy, std::int64_t max_passes = -1);

    // Queues a job.  Throws std::invalid_argument if job_id < 0 or is already queued/running,
    // if n_tokens < 1, max_steps < 0, patience < 1, or n_tokens + n_mem > token_budget.
    // A job resumed from a checkpoint starts with its stop-rule counters where they were:
    // s (its next evaluation's index), best_correct and best_step; a new job has 0, -1, 0.
    // Throws unless 0 <= best_step <= s <= max_steps and -1 <= best_correct < n_tokens.
    void add_job(std::int64_t job_id, std::int64_t n_tokens, std::int64_t max_steps,
                 std::int64_t patience, std::int64_t s = 0, std::int64_t best_correct = -1,
                 std::int64_t best_step = 0);

    // Fills free slots from the queue under the slot and token budgets.  Deterministic.
    Plan plan();

    // history: row-major rows x cols matrix (cols must equal max_slots, rows >= 1), one row
    // per evaluation since the last plan().  Entries of empty slots, and of a job after the
    // row where it stopped, are ignored; other entries must lie in [0, n_tokens - 1], or be
    // -2: the device stopped the job outside the stop rule (non-finite loss), reason "nonfinite".
    // On an exception nothing changes.  Returns finished jobs ordered by (row, slot).
    std::vector<Finished> report(const std::int64_t* history, std::size_t rows, std::size_t cols);
    std::vector<Finished> report(const std::vector<std::vector<std::int64_t>>& history);

    // Drops a queued or running job without a result (its slot is free for the next plan()):
    // e.g. the other attempts of a text once one attempt has gone lossless.  Returns whether
    // the job was queued or running.
    bool cancel(std::int64_t job_id);

    std::size_t pending() const { return queue_by_age_.size(); }
    std::size_t running() const;
    std::size_t finished() const { return finished_; }
    std::size_t cancelled() const { return cancelled_; }
    bool done() const { return pending() == 0 && running() == 0; }

    // Sum over reported evaluations of n_occupied * (padded_length + n_mem) of the plan in
    // force: the batch as the device holds it (frozen or freed slots still count until the
    // next plan(), as they do on the device).
    std::int64_t token_steps() const { return token_steps_; }
    std::int64_t evaluations() const { return evaluations_; }  // rows reported in total

    int max_slots() const { return max_slots_; }
    std::int64_t token_budget() const { return token_budget_; }
    std::int64_t n_mem() const { return n_mem_; }
    std::string policy() const { return policy_ == Policy::Fifo ? "fifo" : "bucketed"; }
    std::int64_t max_passes() const { return max_passes_; }

private:
    struct Job {
        std::int64_t id = -1;
        std::int64_t n_tokens = 0;
        std::int64_t max_steps = 0;
        std::int64_t patience = 1;
        std::int64_t seq = 0;  // arrival order: smaller is older
        std::int64_t s = 0;    // the stop-rule counters it starts with (a resumed job's)
        std::int64_t best_correct = -1;
        std::int64_t best_step = 0;
    };
    struct Slot {
        bool occupied = false;
        Job job;
        std::int64_t s = 0;  // evaluations done so far == index of the next evaluation
        std::int64_t best_correct = -1;
        std::int64_t best_step = 0;
    };

    std::int64_t padded_length() const;
    int n_occupied() const;
    bool fits(std::int64_t n_tokens, std::int64_t padded, int n_occupied) const;
    bool is_starving(const Job& oldest) const;
    void count_pass(const std::vector<std::int64_t>& started_seqs);
    std::optional<std::int64_t> choose_next(std::int64_t padded, int n_occupied) const;
    std::optional<std::int64_t> least_padding(std::int64_t padded, int n_occupied) const;
    int start(std::int64_t seq);
    Plan describe(std::vector<int> new_slots) const;

    int max_slots_;
    std::int64_t token_budget_;
    std::int64_t n_mem_;
    Policy policy_;
    std::int64_t max_passes_;

    std::vector<Slot> slots_;
    std::map<std::int64_t, Job> queue_by_age_;                     // seq -> job
    std::set<std::pair<std::int64_t, std::int64_t>> queue_by_length_;  // (n_tokens, seq)
    std::unordered_set<std::int64_t> active_ids_;                  // queued or running
    std::int64_t next_seq_ = 0;
    std::int64_t oldest_seq_ = -1;   // the oldest queued job when passes were last counted
    std::int64_t oldest_passes_ = 0;  // plans in which that job, being oldest, was passed over
    std::int64_t plan_cost_ = 0;  // n_occupied * (padded_length + n_mem) of the last plan
    std::int64_t token_steps_ = 0;
    std::int64_t evaluations_ = 0;
    std::size_t finished_ = 0;
    std::size_t cancelled_ = 0;
};

}  // namespace cramfast

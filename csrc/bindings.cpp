// pybind11 binding of the scheduler: a thin layer, all logic lives in scheduler.cpp.
// std::invalid_argument thrown there reaches Python as ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "scheduler.h"

namespace py = pybind11;
using cramfast::Finished;
using cramfast::Plan;
using cramfast::Scheduler;

// C-contiguous int64; forcecast lets lists and other integer dtypes convert on the way in.
using HistoryArray = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

PYBIND11_MODULE(_scheduler, m) {
    m.doc() = "Continuous-batching scheduler of cramming jobs (see cramfast.scheduler).";

    py::class_<Plan>(m, "Plan")
        .def_readonly("slot_jobs", &Plan::slot_jobs)
        .def_readonly("new_slots", &Plan::new_slots)
        .def_readonly("padded_length", &Plan::padded_length)
        .def_readonly("n_occupied", &Plan::n_occupied);

    py::class_<Finished>(m, "Finished")
        .def_readonly("job_id", &Finished::job_id)
        .def_readonly("slot", &Finished::slot)
        .def_readonly("reason", &Finished::reason)
        .def_readonly("steps", &Finished::steps)
        .def_readonly("best_step", &Finished::best_step)
        .def_readonly("best_correct", &Finished::best_correct);

    py::class_<Scheduler>(m, "Scheduler")
        .def(py::init<int, std::int64_t, std::int64_t, const std::string&, std::int64_t>(),
             py::arg("max_slots"), py::arg("token_budget"), py::arg("n_mem"),
             py::arg("policy") = "bucketed", py::arg("max_passes") = -1)
        .def("add_job", &Scheduler::add_job, py::arg("job_id"), py::arg("n_tokens"),
             py::arg("max_steps"), py::arg("patience"), py::arg("s") = 0,
             py::arg("best_correct") = -1, py::arg("best_step") = 0)
        .def("plan", &Scheduler::plan)
        .def(
            "report",
            [](Scheduler& self, const HistoryArray& history) {
                if (history.ndim() != 2)
                    throw py::value_error("report expects a 2-D k x max_slots matrix");
                return self.report(history.data(), static_cast<std::size_t>(history.shape(0)),
                                   static_cast<std::size_t>(history.shape(1)));
            },
            py::arg("n_correct_history"))
        .def("cancel", &Scheduler::cancel, py::arg("job_id"))
        .def("pending", &Scheduler::pending)
        .def("running", &Scheduler::running)
        .def("finished", &Scheduler::finished)
        .def("cancelled", &Scheduler::cancelled)
        .def("done", &Scheduler::done)
        .def("token_steps", &Scheduler::token_steps)
        .def("evaluations", &Scheduler::evaluations)
        .def_property_readonly("max_slots", &Scheduler::max_slots)
        .def_property_readonly("token_budget", &Scheduler::token_budget)
        .def_property_readonly("n_mem", &Scheduler::n_mem)
        .def_property_readonly("policy", &Scheduler::policy)
        .def_property_readonly("max_passes", &Scheduler::max_passes);
}

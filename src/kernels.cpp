// The two numeric kernels on gpo-mpi's hot path, as a pybind11 module
// (gpo_mpi._kernels), called through gpo_mpi/kernels/__init__.py.
// gpo_mpi/kernels/reference.py holds the numpy versions the tests hold these
// to. Argument checks and conversions happen here rather than in Python: a
// PPO batch of 2,048 steps takes ~3 us in the GAE loop, and a few numpy calls
// per argument on the Python side would cost as much again. The error texts
// match the numpy backend's, so both backends fail alike.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

template <typename Real>
using CArray = py::array_t<Real, py::array::c_style | py::array::forcecast>;
using Flags = py::array_t<bool, py::array::c_style | py::array::forcecast>;

namespace {

struct Argument {
  const char* name;
  const py::array& array;
};

std::string shape_text(const py::array& array) {
  std::ostringstream text;
  text << "(";
  for (py::ssize_t axis = 0; axis < array.ndim(); ++axis) text << (axis ? ", " : "") << array.shape(axis);
  text << (array.ndim() == 1 ? ",)" : ")");
  return text.str();
}

void check_real(const char* function, const Argument& argument) {
  const char kind = argument.array.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b') {
    throw std::invalid_argument(std::string(function) + ": " + argument.name + " must hold real numbers, not " +
                                py::str(argument.array.dtype()).cast<std::string>());
  }
}

[[noreturn]] void shape_error(const char* function, const Argument& argument, const std::string& expected) {
  throw std::invalid_argument(std::string(function) + ": " + argument.name + " has shape " +
                              shape_text(argument.array) + ", expected " + expected);
}

// Any array-like (an ndarray is passed through as it is, a list converted).
py::array as_array(const py::object& value) {
  py::array array = py::array::ensure(value);
  if (!array) throw py::error_already_set();
  return array;
}

bool is_float32(const py::array& array) { return array.dtype().is(py::dtype::of<float>()); }

template <typename Target>
Target converted(const py::array& array) {
  Target result = Target::ensure(array);
  if (!result) throw py::error_already_set();
  return result;
}

void check_rate(const char* name, double rate) {
  if (!(std::isfinite(rate) && rate >= 0.0 && rate <= 1.0)) {
    std::ostringstream message;
    message << "gae: " << name << " must lie in [0, 1], got " << rate;
    throw std::invalid_argument(message.str());
  }
}

// Generalized advantage estimation over one batch of concatenated episodes.
// delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)
// A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},  done = term | trunc
// The batch end is a cut like a truncation: A_T is taken as 0.
template <typename Real>
py::array gae_loop(const CArray<Real>& rewards, const CArray<Real>& values, const CArray<Real>& next_values,
                   const Flags& terminated, const Flags& truncated, double gamma, double lam) {
  const py::ssize_t n = rewards.size();
  CArray<Real> advantages(n);
  const Real* reward = rewards.data();
  const Real* value = values.data();
  const Real* next_value = next_values.data();
  const bool* is_terminal = terminated.data();
  const bool* is_truncated = truncated.data();
  Real* advantage = advantages.mutable_data();

  const double trace_decay = gamma * lam;
  double next_advantage = 0.0;
  // Only the multiply-add on next_advantage is serial; the rest of each step
  // does not depend on the previous one, so the CPU overlaps it.
  for (py::ssize_t t = n - 1; t >= 0; --t) {
    const double bootstrap = is_terminal[t] ? 0.0 : gamma * static_cast<double>(next_value[t]);
    const double delta = static_cast<double>(reward[t]) + bootstrap - static_cast<double>(value[t]);
    const double carry = (is_terminal[t] || is_truncated[t]) ? 0.0 : trace_decay;
    next_advantage = delta + carry * next_advantage;
    advantage[t] = static_cast<Real>(next_advantage);
  }
  return std::move(advantages);
}

py::array gae(const py::object& rewards_in, const py::object& values_in, const py::object& next_values_in,
              const py::object& terminated_in, const py::object& truncated_in, double gamma, double lam) {
  const py::array rewards = as_array(rewards_in), values = as_array(values_in);
  const py::array next_values = as_array(next_values_in);
  const py::array terminated = as_array(terminated_in), truncated = as_array(truncated_in);
  const std::initializer_list<Argument> arguments = {
      {"rewards", rewards}, {"values", values}, {"next_values", next_values},
      {"terminated", terminated}, {"truncated", truncated}};
  for (const Argument& argument : arguments) check_real("gae", argument);
  if (rewards.ndim() != 1) shape_error("gae", *arguments.begin(), "(T,)");
  const py::ssize_t n = rewards.shape(0);
  for (const Argument& argument : arguments) {
    if (argument.array.ndim() != 1 || argument.array.shape(0) != n) {
      shape_error("gae", argument, "(" + std::to_string(n) + ",)");
    }
  }
  check_rate("gamma", gamma);
  check_rate("lam", lam);

  const Flags terminal_flags = converted<Flags>(terminated);
  const Flags truncation_flags = converted<Flags>(truncated);
  if (is_float32(rewards) && is_float32(values) && is_float32(next_values)) {
    return gae_loop<float>(converted<CArray<float>>(rewards), converted<CArray<float>>(values),
                           converted<CArray<float>>(next_values), terminal_flags, truncation_flags, gamma, lam);
  }
  return gae_loop<double>(converted<CArray<double>>(rewards), converted<CArray<double>>(values),
                          converted<CArray<double>>(next_values), terminal_flags, truncation_flags, gamma, lam);
}

// KL[p || q] per row for diagonal Gaussians given by means and log-stds:
// sum_i  log s_q - log s_p + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2.
// A log-std may be one vector shared by all rows (a state-independent
// log-std, as in gpo-mpi's policy); then every term that does not involve
// the means is the same for all rows and is computed once.
template <typename Real>
py::array kl_loop(const CArray<Real>& mean_p, const CArray<Real>& log_std_p, const CArray<Real>& mean_q,
                  const CArray<Real>& log_std_q) {
  const py::ssize_t rows = mean_p.shape(0);
  const py::ssize_t dims = mean_p.shape(1);
  const bool shared_p = log_std_p.ndim() == 1;
  const bool shared_q = log_std_q.ndim() == 1;
  CArray<Real> kl(rows);
  Real* out = kl.mutable_data();
  const Real* mp = mean_p.data();
  const Real* mq = mean_q.data();
  const Real* lp = log_std_p.data();
  const Real* lq = log_std_q.data();

  if (shared_p && shared_q) {
    double constant = 0.0;
    std::vector<double> half_precision_q(dims);  // 1 / (2 s_q^2)
    for (py::ssize_t i = 0; i < dims; ++i) {
      const double log_ratio = static_cast<double>(lq[i]) - static_cast<double>(lp[i]);
      constant += log_ratio + 0.5 * std::exp(-2.0 * log_ratio) - 0.5;
      half_precision_q[i] = 0.5 * std::exp(-2.0 * static_cast<double>(lq[i]));
    }
    for (py::ssize_t r = 0; r < rows; ++r) {
      const Real* row_p = mp + r * dims;
      const Real* row_q = mq + r * dims;
      double sum = constant;
      for (py::ssize_t i = 0; i < dims; ++i) {
        const double diff = static_cast<double>(row_p[i]) - static_cast<double>(row_q[i]);
        sum += diff * diff * half_precision_q[i];
      }
      out[r] = static_cast<Real>(sum);
    }
    return std::move(kl);
  }

  const py::ssize_t step_p = shared_p ? 0 : dims;
  const py::ssize_t step_q = shared_q ? 0 : dims;
  for (py::ssize_t r = 0; r < rows; ++r) {
    const Real* row_mp = mp + r * dims;
    const Real* row_mq = mq + r * dims;
    const Real* row_lp = lp + r * step_p;
    const Real* row_lq = lq + r * step_q;
    double sum = 0.0;
    for (py::ssize_t i = 0; i < dims; ++i) {
      // exp in the input's precision: expf is much faster than exp, and a
      // float32 result needs no more.
      const Real log_ratio = row_lq[i] - row_lp[i];
      const Real diff = row_mp[i] - row_mq[i];
      const Real variance_ratio = std::exp(Real(-2) * log_ratio);           // s_p^2 / s_q^2
      const Real half_precision_q = Real(0.5) * std::exp(Real(-2) * row_lq[i]);  // 1 / (2 s_q^2)
      sum += static_cast<double>(log_ratio + Real(0.5) * variance_ratio - Real(0.5) + diff * diff * half_precision_q);
    }
    out[r] = static_cast<Real>(sum);
  }
  return std::move(kl);
}

py::array diag_gaussian_kl(const py::object& mean_p_in, const py::object& log_std_p_in,
                           const py::object& mean_q_in, const py::object& log_std_q_in) {
  const py::array mean_p = as_array(mean_p_in), log_std_p = as_array(log_std_p_in);
  const py::array mean_q = as_array(mean_q_in), log_std_q = as_array(log_std_q_in);
  const Argument mean_p_arg{"mean_p", mean_p}, log_std_p_arg{"log_std_p", log_std_p};
  const Argument mean_q_arg{"mean_q", mean_q}, log_std_q_arg{"log_std_q", log_std_q};
  for (const Argument& argument : {mean_p_arg, log_std_p_arg, mean_q_arg, log_std_q_arg}) {
    check_real("diag_gaussian_kl", argument);
  }
  if (mean_p.ndim() != 2) shape_error("diag_gaussian_kl", mean_p_arg, "(rows, dims)");
  const py::ssize_t rows = mean_p.shape(0);
  const py::ssize_t dims = mean_p.shape(1);
  const std::string means_shape = "(" + std::to_string(rows) + ", " + std::to_string(dims) + ")";
  if (mean_q.ndim() != 2 || mean_q.shape(0) != rows || mean_q.shape(1) != dims) {
    shape_error("diag_gaussian_kl", mean_q_arg, means_shape);
  }
  for (const Argument& argument : {log_std_p_arg, log_std_q_arg}) {
    const py::array& log_std = argument.array;
    const bool shared = log_std.ndim() == 1 && log_std.shape(0) == dims;
    const bool per_row = log_std.ndim() == 2 && log_std.shape(0) == rows && log_std.shape(1) == dims;
    if (!shared && !per_row) {
      shape_error("diag_gaussian_kl", argument, means_shape + " or (" + std::to_string(dims) + ",)");
    }
  }
  if (is_float32(mean_p) && is_float32(log_std_p) && is_float32(mean_q) && is_float32(log_std_q)) {
    return kl_loop<float>(converted<CArray<float>>(mean_p), converted<CArray<float>>(log_std_p),
                          converted<CArray<float>>(mean_q), converted<CArray<float>>(log_std_q));
  }
  return kl_loop<double>(converted<CArray<double>>(mean_p), converted<CArray<double>>(log_std_p),
                         converted<CArray<double>>(mean_q), converted<CArray<double>>(log_std_q));
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "C++ kernels of gpo-mpi: GAE and the diagonal-Gaussian KL (see gpo_mpi.kernels).";
  m.def("gae", &gae,
        "gae(rewards, values, next_values, terminated, truncated, gamma, lam) -> advantages\n\n"
        "1-D arrays of one length; float32 out only when all three float inputs are float32.",
        py::arg("rewards"), py::arg("values"), py::arg("next_values"), py::arg("terminated"),
        py::arg("truncated"), py::arg("gamma"), py::arg("lam"));
  m.def("diag_gaussian_kl", &diag_gaussian_kl,
        "diag_gaussian_kl(mean_p, log_std_p, mean_q, log_std_q) -> KL[p || q] per row\n\n"
        "Means (rows, dims); each log-std (rows, dims) or (dims,) shared by all rows.",
        py::arg("mean_p"), py::arg("log_std_p"), py::arg("mean_q"), py::arg("log_std_q"));
}

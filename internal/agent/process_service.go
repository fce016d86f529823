package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/huskvm/husk/internal/envd/process"
)

// processService implements process.Process on top of the procTable.
type processService struct{ s *Server }

const (
	keepaliveHeader  = "Keepalive-Ping-Interval"
	timeoutHeader    = "Connect-Timeout-Ms"
	defaultKeepalive = 90 * time.Second
)

// keepaliveInterval reads Keepalive-Ping-Interval (seconds), defaulting to
// 90 s when it is missing or invalid, as envd does.
func keepaliveInterval(h http.Header) time.Duration {
	v, err := strconv.Atoi(h.Get(keepaliveHeader))
	if err != nil || v <= 0 {
		return defaultKeepalive
	}
	return time.Duration(min(v, 3600)) * time.Second
}

// requestTimeout reads Connect-Timeout-Ms; 0 means none.
func requestTimeout(h http.Header) time.Duration {
	v := h.Get(timeoutHeader)
	if v == "" || len(v) > 10 {
		return 0
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms <= 0 {
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}

func (ps *processService) Start(ctx context.Context, req *connect.Request[process.StartRequest], stream *connect.ServerStream[process.StartResponse]) error {
	s := ps.s
	u, err := s.requestUser(req.Header())
	if err != nil {
		return err
	}
	p, sub, err := s.procs.start(startSpec{
		user:     u,
		req:      req.Msg,
		env:      baseEnv(u, s.sandboxEnv()),
		workdir:  s.defaultWorkdir(),
		timeout:  requestTimeout(req.Header()),
		ptmx:     s.cfg.PTMX,
		asRoot:   s.asRoot,
		attached: true,
	})
	if err != nil {
		return processError(err)
	}
	s.log.Debug("process started", "pid", p.pid, "cmd", req.Msg.GetProcess().GetCmd(), "user", u.Name)
	return streamProcess(ctx, p, sub, keepaliveInterval(req.Header()), func(ev *process.ProcessEvent) error {
		return stream.Send(&process.StartResponse{Event: ev})
	})
}

func (ps *processService) Connect(ctx context.Context, req *connect.Request[process.ConnectRequest], stream *connect.ServerStream[process.ConnectResponse]) error {
	p, err := ps.s.procs.lookup(req.Msg.GetProcess(), true)
	if err != nil {
		return processError(err)
	}
	sub := p.attach()
	return streamProcess(ctx, p, sub, keepaliveInterval(req.Header()), func(ev *process.ProcessEvent) error {
		return stream.Send(&process.ConnectResponse{Event: ev})
	})
}

// streamProcess sends a process's events to one stream: start, the backlog,
// output as it comes with keepalives while idle, then end. The process is not
// affected when the stream ends early.
func streamProcess(ctx context.Context, p *proc, sub *subscriber, keepalive time.Duration, send func(*process.ProcessEvent) error) error {
	defer p.detach(sub)
	start := &process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: p.pid}}}
	if err := send(start); err != nil {
		return err
	}
	for _, ev := range sub.backlog {
		if err := send(ev); err != nil {
			return err
		}
	}
	sub.backlog = nil
	idle := time.NewTimer(keepalive)
	defer idle.Stop()
	sendEnd := func() error {
		for {
			select {
			case ev := <-sub.ch:
				if err := send(ev); err != nil {
					return err
				}
				continue
			default:
			}
			break
		}
		return send(&process.ProcessEvent{Event: &process.ProcessEvent_End{End: p.endEvent()}})
	}
	for {
		select {
		case ev := <-sub.ch:
			if err := send(ev); err != nil {
				return err
			}
			idle.Reset(keepalive)
		case <-p.done:
			return sendEnd()
		case <-idle.C:
			ka := &process.ProcessEvent{Event: &process.ProcessEvent_Keepalive{Keepalive: &process.ProcessEvent_KeepAlive{}}}
			if err := send(ka); err != nil {
				return err
			}
			idle.Reset(keepalive)
		case <-ctx.Done():
			return ctxError(ctx)
		}
	}
}

func (ps *processService) List(ctx context.Context, req *connect.Request[process.ListRequest]) (*connect.Response[process.ListResponse], error) {
	return connect.NewResponse(&process.ListResponse{Processes: ps.s.procs.list()}), nil
}

func (ps *processService) Update(ctx context.Context, req *connect.Request[process.UpdateRequest]) (*connect.Response[process.UpdateResponse], error) {
	p, err := ps.s.procs.lookup(req.Msg.GetProcess(), false)
	if err != nil {
		return nil, processError(err)
	}
	if req.Msg.Pty != nil {
		size := req.Msg.GetPty().GetSize()
		cols, rows := size.GetCols(), size.GetRows()
		if cols == 0 || rows == 0 || cols > 0xffff || rows > 0xffff {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("pty size %dx%d: cols and rows must be 1..65535", cols, rows))
		}
		if err := p.resize(uint16(cols), uint16(rows)); err != nil {
			return nil, processError(err)
		}
	}
	return connect.NewResponse(&process.UpdateResponse{}), nil
}

func (ps *processService) SendInput(ctx context.Context, req *connect.Request[process.SendInputRequest]) (*connect.Response[process.SendInputResponse], error) {
	p, err := ps.s.procs.lookup(req.Msg.GetProcess(), false)
	if err != nil {
		return nil, processError(err)
	}
	if err := writeProcessInput(p, req.Msg.GetInput()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&process.SendInputResponse{}), nil
}

func writeProcessInput(p *proc, in *process.ProcessInput) error {
	var err error
	switch v := in.GetInput().(type) {
	case *process.ProcessInput_Stdin:
		err = p.writeInput(v.Stdin, false)
	case *process.ProcessInput_Pty:
		err = p.writeInput(v.Pty, true)
	default:
		return connect.NewError(connect.CodeInvalidArgument, errors.New("input: one of stdin or pty is required"))
	}
	if err != nil {
		return processError(err)
	}
	return nil
}

func (ps *processService) StreamInput(ctx context.Context, stream *connect.ClientStream[process.StreamInputRequest]) (*connect.Response[process.StreamInputResponse], error) {
	var p *proc
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *process.StreamInputRequest_Start:
			if p != nil {
				return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("stream input: a second start event"))
			}
			var err error
			if p, err = ps.s.procs.lookup(ev.Start.GetProcess(), false); err != nil {
				return nil, processError(err)
			}
		case *process.StreamInputRequest_Data:
			if p == nil {
				return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("stream input: data before the start event"))
			}
			if err := writeProcessInput(p, ev.Data.GetInput()); err != nil {
				return nil, err
			}
		case *process.StreamInputRequest_Keepalive:
		default:
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("stream input: empty event"))
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&process.StreamInputResponse{}), nil
}

func (ps *processService) SendSignal(ctx context.Context, req *connect.Request[process.SendSignalRequest]) (*connect.Response[process.SendSignalResponse], error) {
	var sig unix.Signal
	switch req.Msg.GetSignal() {
	case process.Signal_SIGNAL_SIGKILL:
		sig = unix.SIGKILL
	case process.Signal_SIGNAL_SIGTERM:
		sig = unix.SIGTERM
	case process.Signal_SIGNAL_SIGINT:
		sig = unix.SIGINT
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("signal %v: want SIGNAL_SIGINT, SIGNAL_SIGTERM or SIGNAL_SIGKILL", req.Msg.GetSignal()))
	}
	p, err := ps.s.procs.lookup(req.Msg.GetProcess(), false)
	if err != nil {
		return nil, processError(err)
	}
	if err := p.signal(sig); err != nil {
		return nil, processError(err)
	}
	return connect.NewResponse(&process.SendSignalResponse{}), nil
}

func (ps *processService) CloseStdin(ctx context.Context, req *connect.Request[process.CloseStdinRequest]) (*connect.Response[process.CloseStdinResponse], error) {
	p, err := ps.s.procs.lookup(req.Msg.GetProcess(), false)
	if err != nil {
		return nil, processError(err)
	}
	if err := p.closeStdin(); err != nil {
		return nil, processError(err)
	}
	return connect.NewResponse(&process.CloseStdinResponse{}), nil
}

// processError maps a process-table error to its Connect code.
func processError(err error) error {
	var ce *connect.Error
	switch {
	case errors.As(err, &ce):
		return err
	case errors.Is(err, errNoProcess):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, errInvalidStart), errors.Is(err, errNoSuchCommand):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.Is(err, errNoInput):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, errTagInUse):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.Is(err, errNotPermitted):
		return connect.NewError(connect.CodePermissionDenied, err)
	case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOMEM):
		return connect.NewError(connect.CodeResourceExhausted, err)
	case errors.Is(err, unix.ETIMEDOUT), errors.Is(err, os.ErrDeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	default:
		return connect.NewError(connect.CodeInternal, err)
	}
}

// ctxError is the Connect error for a stream whose context ended.
func ctxError(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
	}
	return connect.NewError(connect.CodeCanceled, ctx.Err())
}
